"""The server's own draft model, for ``cloud-sd`` (the co-located baseline): speculative decoding
entirely in the cloud.

One set of weights, one KV cache per session (a ``DraftRuntime`` over the shared model), so
sessions never roll back each other's caches. The drafting runs on the server's compute thread as
a job of its own (``scheduler.Job.run``), never beside a target forward: on a CPU server the draft
shares the target's cores, and on a GPU its streaming multiprocessors, so its time is server time
and is counted as such (the honest cost of co-location).

Backend: ``transformers``, in the target's dtype and on the target's device, as a provider runs
the draft of a co-located speculative decoder in the serving framework it runs the target in
(vLLM, TGI, TensorRT-LLM all do), not in a second engine. llama.cpp's quantised draft is an edge
choice: here it would need one llama.cpp context per session.
"""

from __future__ import annotations

import logging
from typing import Any

from edgespec.decoding.config import DRAFT_SEED_OFFSET
from edgespec.decoding.sampling import SamplingParams
from edgespec.models.draft import DraftBlock, DraftRuntime

logger = logging.getLogger(__name__)


class CloudDraft:
    """The shared draft weights; ``session()`` gives a drafter with a cache of its own."""

    def __init__(self, model: Any, name: str = "") -> None:
        self.model = model
        self.name = name
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])

    @classmethod
    def load(cls, name_or_path: str, dtype: str, device: str = "cpu") -> "CloudDraft":
        from edgespec.models.loading import load_model

        loaded = load_model(name_or_path, dtype)
        model = loaded.model.to(device) if device != "cpu" else loaded.model
        logger.info("cloud draft %s loaded (%s, %s) for cloud-sd", name_or_path, dtype, device)
        return cls(model, str(name_or_path))

    def check_pairs_with(self, target_vocab: int) -> None:
        if self.vocab_size != target_vocab:
            raise ValueError(
                f"the cloud draft's vocabulary ({self.vocab_size} ids) is not the target's ({target_vocab}): "
                "speculative decoding needs one tokenizer for both"
            )

    def session(self, sampling: SamplingParams, seed: int) -> "SessionDrafter":
        return SessionDrafter(DraftRuntime(self.model), sampling, seed)


class SessionDrafter:
    """One cloud-sd session's drafting: its own cache, its sampling, and the draft's seed (offset
    as an edge draft's, so cloud-sd samples what ``sd`` would with the same draft and γ)."""

    def __init__(self, runtime: DraftRuntime, sampling: SamplingParams, seed: int) -> None:
        self.runtime = runtime
        self.sampling = sampling
        self.seed = seed + DRAFT_SEED_OFFSET

    def draft(self, sequence: list[int], gamma: int) -> DraftBlock:
        return self.runtime.draft(sequence, gamma, self.sampling, seed=self.seed)
