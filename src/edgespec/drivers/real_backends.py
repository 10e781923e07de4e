"""Backends that run the real models and charge their measured wall time: the in-process engine
is the virtual-clock driver (``drivers/virtual_clock.py``) with these, so every mode, pre-drafting and
pipelining included, runs the real draft and target with each side's real cost."""

from __future__ import annotations

import time
from typing import Any, Sequence

from edgespec.core.block import DraftBlock
from edgespec.core.config import DRAFT_SEED_OFFSET, SamplingParams
from edgespec.decoding.block_scoring import begin_round
from edgespec.decoding.grammar import GrammarMatcher, SequenceGrammar, apply_mask
from edgespec.decoding.verification import RoundUniforms
from edgespec.drivers.backend_interface import CloudJob, JobKind, VerifyResult
from edgespec.models.draft import DraftRuntime
from edgespec.models.kv import TrackedCache
from edgespec.models.target import TargetRuntime
from edgespec.sampling import token_from_forward


class RealEdge:
    def __init__(
        self,
        draft: DraftRuntime,
        sampling: SamplingParams,
        seed: int,
        candidates: bool = False,
        alternatives: bool = False,
        stop_below: float = 0.0,
        grammar: SequenceGrammar | None = None,
    ) -> None:
        self.runtime = draft
        self.grammar = grammar  # the draft drafts under the verifier's mask (None: freely)
        self.sampling = sampling
        self.seed = seed + DRAFT_SEED_OFFSET
        self.candidates = candidates  # keep the draft's top ids per token, for candidate-id exits
        self.alternatives = alternatives  # keep each token's confidence and runner-up, for runner-up branches
        self.stop_below = stop_below  # end a block after a token the draft is less sure of

    def draft(self, sequence: Sequence[int], gamma: int, min_tokens: int = 1) -> tuple[DraftBlock, float]:
        start = time.perf_counter()
        grammar = self.grammar.for_draft(sequence) if self.grammar is not None else None
        block = self.runtime.draft(
            sequence,
            gamma,
            self.sampling,
            seed=self.seed,
            candidates=self.candidates,
            alternatives=self.alternatives,
            stop_below=self.stop_below,
            min_tokens=min_tokens,
            **({"grammar": grammar} if grammar is not None else {}),
        )
        return block, time.perf_counter() - start


class RealCloud:
    """The target, one forward per job (in process there is one session, so no batching); with
    ``draft``, the server's own draft model too (cloud-sd: a "draft" job, the server's compute).
    ``grammar``: the session's matcher at its committed text; every verified position and every
    decoded token is masked by it, as the server's session masks them, and the server's own
    draft drafts under it."""

    def __init__(
        self,
        target: TargetRuntime,
        kv: TrackedCache | None = None,
        draft: DraftRuntime | None = None,
        exit_candidates: bool = True,
        grammar: GrammarMatcher | None = None,
    ) -> None:
        self.target = target
        self.grammar = grammar
        # Exits score only the draft's candidate ids when the block carries them (False: whole vocabulary).
        self.exit_candidates = exit_candidates
        self.kv = kv if kv is not None else target.kv
        self.draft = draft
        self._sampling: dict[int, tuple[SamplingParams, int]] = {}

    def open(self, session: int, sampling: SamplingParams, seed: int) -> None:
        self._sampling[session] = (sampling, seed)

    def close(self, session: int) -> None:
        self._sampling.pop(session, None)

    def run(self, jobs: list[CloudJob]) -> tuple[list[Any], float]:
        start = time.perf_counter()
        results = [self._run(job) for job in jobs]
        return results, time.perf_counter() - start

    def _run(self, job: CloudJob) -> Any:
        sampling, seed = self._sampling[job.session]
        if job.kind is JobKind.PREFILL:
            self.target.score_tail(job.sequence, 1, kv=self.kv)
            return None
        if job.kind is JobKind.DRAFT:
            if self.draft is None:
                raise ValueError("cloud-sd needs a draft model on the server")
            # The draft's randomness is the one an edge draft would use: the same seed offset.
            # Its sequence is the committed text, where the session's matcher stands.
            constrained = {"grammar": self.grammar.copy()} if self.grammar is not None else {}
            return self.draft.draft(
                job.sequence,
                job.gamma,
                sampling,
                seed=seed + DRAFT_SEED_OFFSET,
                stop_below=job.stop_below,
                **constrained,
            )
        grammar = self.grammar
        if job.kind is JobKind.DECODE:
            argmax_only = sampling.greedy and grammar is None
            scored = self.target.score_tail(job.sequence, 1, kv=self.kv, argmax_only=argmax_only)[0]
            if grammar is not None:
                scored = apply_mask(scored, grammar.mask())
            uniform = None if sampling.greedy else RoundUniforms.for_decode(seed, len(job.sequence))
            token = token_from_forward(scored, sampling, uniform)
            if grammar is not None:
                grammar.advance([token])
            return token
        assert job.block is not None
        pending = begin_round(
            self.target,
            job.sequence,
            job.block.tokens,
            sampling,
            job.block.payload,
            seed,
            job.with_exits,
            kv=self.kv,
            candidates=job.block.candidates if self.exit_candidates else None,
            full_logits=grammar is not None,
        )
        scored = self.target.score(pending.request)
        if grammar is not None:
            scored = apply_mask(scored, grammar.block_masks(job.block.tokens))
        verdict, judge = pending.finish(scored)
        if grammar is not None:
            grammar.settle(job.block.tokens, verdict.accepted, verdict.next_token)
        return VerifyResult(verdict, judge.verdicts if judge is not None else [])
