"""The server's own draft model, for ``cloud-sd`` (the co-located baseline): speculative decoding
entirely in the cloud.

One set of weights, one KV cache per session. Drafting runs on the server's compute thread as a
job of its own (``jobs.Job.standalone``), never beside a target forward: on a CPU server the draft
shares the target's cores, and on a GPU its streaming multiprocessors, so its time is server time
and is counted as such (the honest cost of co-location). Sessions waiting to draft are drafted
together, one batched draft step at a time over their own caches (the target's ragged batching,
``TargetRuntime.score_batch``, on the draft's weights), as a provider batches its drafts.

Backend: ``transformers``, in the target's dtype and on the target's device, as a provider runs
the draft of a co-located speculative decoder in the serving framework it runs the target in
(vLLM, TGI, TensorRT-LLM all do), not in a second engine. llama.cpp's quantised draft is an edge
choice: here it would need one llama.cpp context per session and could not batch across them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from edgespec.core.block import DraftBlock
from edgespec.core.config import DRAFT_SEED_OFFSET, SamplingParams
from edgespec.models.draft import DRAFT_SUPPORT, token_confidence
from edgespec.models.kv import TrackedCache
from edgespec.models.target import ScoreRequest, TargetRuntime
from edgespec.sampling import logits_to_probs, position_uniform, restrict_support, sample_with_uniform

logger = logging.getLogger(__name__)


@dataclass
class SessionDrafter:
    """One cloud-sd session's drafting state: its cache, its sampling, and the draft's seed (offset
    as an edge draft's, so cloud-sd samples what ``sd`` would with the same draft and γ)."""

    kv: TrackedCache
    sampling: SamplingParams
    seed: int


@dataclass(eq=False)  # compared by identity: one session's one draft
class DraftRequest:
    drafter: SessionDrafter
    sequence: list[int]
    gamma: int
    stop_below: float = 0.0  # greedy: end the block after a token the draft is less sure of
    cancelled: bool = False
    block: DraftBlock | None = None
    batch_ms: float = 0.0  # the batched drafting it rode in (counted once per session, like a verify)
    batch_size: int = 0
    _tokens: list[int] = field(default_factory=list)
    _probs: list[torch.Tensor] = field(default_factory=list)
    _stopped: bool = False  # its confidence stop ended the block


class CloudDraft:
    """The shared draft weights and the sessions waiting to draft."""

    def __init__(self, model: Any, name: str = "", max_batch: int = 32) -> None:
        self.runtime = TargetRuntime(model)  # its ragged batching, on the draft's weights
        self.name = name
        self.max_batch = max_batch
        self.vocab_size = self.runtime.vocab_size
        self._waiting: list[DraftRequest] = []
        self._lock = threading.Lock()

    @classmethod
    def load(cls, name_or_path: str, dtype: str, device: str = "cpu", max_batch: int = 32) -> "CloudDraft":
        from edgespec.models.loading import load_model

        loaded = load_model(name_or_path, dtype)
        model = loaded.model.to(device) if device != "cpu" else loaded.model
        logger.info("cloud draft %s loaded (%s, %s) for cloud-sd", name_or_path, dtype, device)
        return cls(model, str(name_or_path), max_batch)

    def check_pairs_with(self, target_vocab: int) -> None:
        if self.vocab_size != target_vocab:
            raise ValueError(
                f"the cloud draft's vocabulary ({self.vocab_size} ids) is not the target's ({target_vocab}): "
                "speculative decoding needs one tokenizer for both"
            )

    def session(self, sampling: SamplingParams, seed: int) -> SessionDrafter:
        return SessionDrafter(self.runtime.new_cache(), sampling, seed + DRAFT_SEED_OFFSET)

    def enqueue(
        self, drafter: SessionDrafter, sequence: list[int], gamma: int, stop_below: float = 0.0
    ) -> DraftRequest:
        """Queue a draft (event-loop side); then run ``draft_queued(request)`` as a compute job."""
        if gamma < 1:
            raise ValueError(f"gamma must be >= 1, got {gamma}")
        request = DraftRequest(drafter, list(sequence), gamma, stop_below)
        with self._lock:
            self._waiting.append(request)
        return request

    def draft_queued(self, request: DraftRequest) -> DraftBlock:
        """On the compute thread: draft every session waiting now (this one among them, unless an
        earlier job already drafted it along with its own), and return this one's block."""
        if request.block is None:
            with self._lock:
                batch = [r for r in self._waiting if not r.cancelled][: self.max_batch]
                if not any(r is request for r in batch):  # past the batch cap, or its batch failed: it goes first
                    batch = [request, *batch[: self.max_batch - 1]]
                taken = {id(r) for r in batch}
                self._waiting = [r for r in self._waiting if id(r) not in taken and not r.cancelled]
            self._draft_together(batch)
        assert request.block is not None
        return request.block

    @torch.inference_mode()
    def _draft_together(self, batch: list[DraftRequest]) -> None:
        started = time.perf_counter()
        try:
            for step in range(max(r.gamma for r in batch)):
                active = [r for r in batch if step < r.gamma and not r._stopped]
                if not active:  # every block ended early on its confidence stop
                    break
                # Each session feeds what its cache lacks (its sequence, then its drafted tokens);
                # the last drafted token stays unfed, as on the edge.
                requests = [ScoreRequest(r.sequence + r._tokens, 1, r.drafter.kv) for r in active]
                logits = self.runtime.score_batch(requests)
                for r, rows in zip(active, logits):
                    self._choose(r, rows[-1].float(), step)
        except BaseException:
            for r in batch:  # whoever waits on them fails with this job or redrafts on its own
                r._tokens, r._probs, r._stopped = [], [], False
            raise
        batch_ms = (time.perf_counter() - started) * 1000
        for r in batch:
            r.block = DraftBlock(tokens=r._tokens, probs=torch.stack(r._probs) if r._probs else None)
            r.batch_ms, r.batch_size = batch_ms, len(batch)

    @staticmethod
    def _choose(request: DraftRequest, logits: torch.Tensor, step: int) -> None:
        """The draft's rule (``DraftRuntime.draft``): argmax, or a draw from its top tokens with
        the uniform of (seed, position)."""
        params = request.drafter.sampling
        if params.greedy:
            token = int(torch.argmax(logits))
            if request.stop_below > 0 and token_confidence(logits, token) < request.stop_below:
                request._stopped = True
        else:
            distribution = restrict_support(logits_to_probs(logits, params), DRAFT_SUPPORT)
            token = sample_with_uniform(
                distribution, position_uniform(request.drafter.seed, len(request.sequence) + step)
            )
            request._probs.append(distribution)
        request._tokens.append(token)
