"""One generation session on the server: its committed sequence, its own KV cache, its seeded
verification randomness, and the rules for which block may be verified next.

Everything here runs on the compute thread and knows nothing of gRPC: the servicer turns wire
messages into calls and results back into messages.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from typing import Callable

import torch

from edgespec.decoding.early import EarlyVerdict
from edgespec.decoding.rounds import begin_round
from edgespec.decoding.sampling import SamplingParams, choose_token
from edgespec.decoding.stopping import clip_to_stop
from edgespec.decoding.verification import RoundUniforms, Verdict
from edgespec.models.target import ScoreRequest, TargetRuntime
from edgespec.server.scheduler import Job
from edgespec.transport import edgespec_pb2 as pb
from edgespec.transport.codec import ProtocolError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionLimits:
    max_prompt_tokens: int = 8192
    max_new_tokens: int = 4096
    max_block: int = 64
    # A session that sends nothing for this long, or lives longer than this, is ended (EXPIRED)
    # so a vanished client cannot pin its KV cache.
    idle_timeout_s: float = 120.0
    max_lifetime_s: float = 3600.0


@dataclass
class RoundOutcome:
    verdict: Verdict
    committed: list[int]
    finished: bool
    early: list[EarlyVerdict] = field(default_factory=list)


class ServerSession:
    def __init__(
        self,
        runtime: TargetRuntime,
        prompt_ids: list[int],
        committed_ids: list[int],
        sampling: SamplingParams,
        seed: int,
        max_new_tokens: int,
        eos_ids: frozenset[int],
        limits: SessionLimits,
    ) -> None:
        vocab = runtime.vocab_size
        if not prompt_ids:
            raise ProtocolError(pb.BAD_REQUEST, "the prompt is empty")
        if len(prompt_ids) > limits.max_prompt_tokens:
            raise ProtocolError(pb.TOO_LARGE, f"prompt of {len(prompt_ids)} tokens exceeds the limit of {limits.max_prompt_tokens}")
        if not 1 <= max_new_tokens <= limits.max_new_tokens:
            raise ProtocolError(pb.TOO_LARGE, f"max_new_tokens must be in 1..{limits.max_new_tokens}, got {max_new_tokens}")
        try:
            runtime.check_fits(len(prompt_ids), max_new_tokens)
        except ValueError as error:
            raise ProtocolError(pb.TOO_LARGE, str(error)) from None
        for token in (*prompt_ids, *committed_ids):
            if token >= vocab:
                raise ProtocolError(pb.OUT_OF_VOCABULARY, f"token id {token} is outside the vocabulary (size {vocab})")
        self.id = secrets.token_urlsafe(18)
        self.runtime = runtime
        self.kv = runtime.new_cache()
        self.sequence = list(prompt_ids) + list(committed_ids)
        self.prompt_len = len(prompt_ids)
        self.sampling = sampling
        self.seed = seed  # verification uniforms are keyed by (seed, position): see RoundUniforms.at
        self.max_new_tokens = max_new_tokens
        self.eos_ids = eos_ids
        self.limits = limits
        self.next_round = 0
        self.last_verdict: tuple[int, Verdict] | None = None
        self.early_verdicts = False  # stream exit verdicts to the client
        self.finished = self.produced >= max_new_tokens or bool(committed_ids and committed_ids[-1] in eos_ids)

    @property
    def produced(self) -> int:
        return len(self.sequence) - self.prompt_len

    def prefill_job(self) -> Job[None] | None:
        """Fill the KV cache with everything but the last committed token (None: nothing to fill).
        Runs alone: it is the one long forward, and padding other sessions to it would waste."""
        if len(self.sequence) < 2:
            return None
        return Job(ScoreRequest(self.sequence[:-1], 1, self.kv), finish=lambda logits: None, solo=True)

    def check_order(self, block: pb.DraftBlock) -> None:
        """Whether this session takes ``block`` now; its contents are checked on arrival
        (transport/validation.check_block), before any session state is consulted."""
        if self.finished:
            raise ProtocolError(pb.OUT_OF_ORDER, "the generation has finished; no more blocks are accepted")
        if block.round != self.next_round:
            raise ProtocolError(pb.OUT_OF_ORDER, f"block for round {block.round}, expected round {self.next_round}")

    def assumption_holds(self, assumes: pb.Assumption) -> bool:
        """A pipelined pre-draft is valid only if it assumed the verdict that actually came."""
        if self.last_verdict is None or self.finished:
            return False
        round_index, verdict = self.last_verdict
        return assumes.round == round_index and Verdict(assumes.accepted, assumes.next_token) == verdict

    def verify_job(
        self,
        tokens: list[int],
        draft_probs: torch.Tensor | None,
        on_early: Callable[[EarlyVerdict], None] | None,
    ) -> Job[RoundOutcome]:
        pending = begin_round(
            self.runtime, self.sequence, tokens, self.sampling, draft_probs, self.seed,
            with_exits=on_early is not None, on_streamed=on_early, kv=self.kv,
        )

        def finish(logits: torch.Tensor) -> RoundOutcome:
            verdict, judge = pending.finish(logits)
            commit = clip_to_stop(verdict.committed(tokens), self.eos_ids, self.max_new_tokens - self.produced)
            self._commit(commit.tokens, commit.finished, verdict)
            return RoundOutcome(verdict, commit.tokens, commit.finished, early=judge.verdicts if judge else [])

        return Job(pending.request, finish)

    def decode_job(self) -> Job[tuple[int, bool]]:
        """One autoregressive token (cloud-ar): (token, finished)."""
        uniform = None if self.sampling.greedy else RoundUniforms.for_decode(self.seed, len(self.sequence))

        def finish(logits: torch.Tensor) -> tuple[int, bool]:
            token = choose_token(logits[0], self.sampling, uniform)
            commit = clip_to_stop([token], self.eos_ids, self.max_new_tokens - self.produced)
            self._commit(commit.tokens, commit.finished, None)
            return token, commit.finished

        return Job(ScoreRequest(list(self.sequence), 1, self.kv), finish)

    def _commit(self, tokens: list[int], finished: bool, verdict: Verdict | None) -> None:
        self.sequence.extend(tokens)
        self.runtime.rollback(self.sequence, kv=self.kv)
        if verdict is not None:
            self.last_verdict = (self.next_round, verdict)
            self.next_round += 1
        self.finished = finished
