"""One verification round, as the server and the in-process engine both run it: draw the round's
uniforms, score committed + block in one forward (exits judged mid-forward), decide the verdict."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from edgespec.decoding.early import EarlyVerdict, EarlyVerdictJudge
from edgespec.decoding.sampling import SamplingParams
from edgespec.decoding.verification import RoundUniforms, Verdict, verdict_from_logits
from edgespec.models.kv import TrackedCache
from edgespec.models.target import TargetRuntime


def verify_block(
    target: TargetRuntime,
    sequence: Sequence[int],
    tokens: Sequence[int],
    params: SamplingParams,
    draft_probs: torch.Tensor | None,
    generator: torch.Generator,
    with_exits: bool,
    on_streamed: Callable[[EarlyVerdict], None] | None = None,
    kv: TrackedCache | None = None,
) -> tuple[Verdict, EarlyVerdictJudge | None]:
    """The verdict on ``tokens`` drafted after ``sequence``, and the judge holding every early
    verdict of the pass (None without exits). ``on_streamed`` hears each confident one at once."""
    gamma = len(tokens)
    uniforms = None if params.greedy else RoundUniforms.draw(generator, gamma)
    judge = None
    if with_exits and target.exits is not None:
        judge = EarlyVerdictJudge(target.exits, tokens, params, draft_probs, uniforms, on_streamed)
    logits = target.score_tail(list(sequence) + list(tokens), gamma + 1, on_exit=judge, kv=kv)
    return verdict_from_logits(logits, tokens, params, draft_probs, uniforms), judge
