"""One verification round, as the server and the in-process engine both run it: take the round's
position-tied uniforms, score committed + block in one forward (exits judged mid-forward), decide
the verdict.

The round is split around its forward pass (``begin_round`` ... ``PendingRound.finish``) so a
server can run many sessions' rounds in one batched forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from edgespec.core.config import SamplingParams
from edgespec.core.verdict import Verdict
from edgespec.decoding.early import EarlyVerdict, EarlyVerdictJudge, with_draft_tokens
from edgespec.decoding.verification import RoundUniforms, greedy_verdict_from_choices, verdict_from_logits
from edgespec.models.kv import TrackedCache
from edgespec.models.target import ScoreRequest, TargetRuntime


@dataclass
class PendingRound:
    """A round whose forward pass is still to run: ``request`` says what to score."""

    request: ScoreRequest
    tokens: list[int]
    params: SamplingParams
    draft_probs: torch.Tensor | None
    uniforms: RoundUniforms | None
    judge: EarlyVerdictJudge | None

    def finish(self, scored: torch.Tensor) -> tuple[Verdict, EarlyVerdictJudge | None]:
        """``scored``: what the forward returned for ``request``: logits, or for a greedy round the
        argmax ids (``ScoreRequest.argmax_only``)."""
        if self.request.argmax_only:
            return greedy_verdict_from_choices(scored.tolist(), self.tokens), self.judge
        return verdict_from_logits(scored, self.tokens, self.params, self.draft_probs, self.uniforms), self.judge


def begin_round(
    target: TargetRuntime,
    sequence: Sequence[int],
    tokens: Sequence[int],
    params: SamplingParams,
    draft_probs: torch.Tensor | None,
    seed: int,
    with_exits: bool,
    on_streamed: Callable[[EarlyVerdict], None] | None = None,
    kv: TrackedCache | None = None,
    candidates: torch.Tensor | None = None,
    full_logits: bool = False,
) -> PendingRound:
    """``candidates`` ([gamma, k] draft top-k ids, greedy only): the exits score just those ids
    through the LM head's rows instead of the whole vocabulary (see ``candidate_verdict``).
    ``full_logits``: the forward returns the logits even for a greedy round (log-probabilities
    are read from them), not only their argmax ids."""
    gamma = len(tokens)
    uniforms = None if params.greedy else RoundUniforms.at(seed, len(sequence), gamma)
    judge = None
    exit_candidates = None
    if with_exits and target.exits is not None:
        judge = EarlyVerdictJudge(target.exits, tokens, params, draft_probs, uniforms, on_streamed)
        if candidates is not None and params.greedy:
            exit_candidates = with_draft_tokens(candidates, tokens)
    request = ScoreRequest(
        list(sequence) + list(tokens),
        gamma + 1,
        kv if kv is not None else target.kv,
        on_exit=judge,
        exit_candidates=exit_candidates,
        argmax_only=params.greedy and not full_logits,
    )
    return PendingRound(request, list(tokens), params, draft_probs, uniforms, judge)


def verify_block(
    target: TargetRuntime,
    sequence: Sequence[int],
    tokens: Sequence[int],
    params: SamplingParams,
    draft_probs: torch.Tensor | None,
    seed: int,
    with_exits: bool,
    on_streamed: Callable[[EarlyVerdict], None] | None = None,
    kv: TrackedCache | None = None,
    candidates: torch.Tensor | None = None,
) -> tuple[Verdict, EarlyVerdictJudge | None]:
    """The verdict on ``tokens`` drafted after ``sequence``, and the judge holding every early
    verdict of the pass (None without exits). ``on_streamed`` hears each confident one at once."""
    pending = begin_round(target, sequence, tokens, params, draft_probs, seed, with_exits, on_streamed, kv, candidates)
    return pending.finish(target.score(pending.request))
