"""Early verdicts: what each exit would decide, how sure it is, and whether it is streamed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from edgespec.decoding.sampling import SamplingParams
from edgespec.decoding.verification import RoundUniforms, Verdict, verdict_confidence, verdict_from_logits
from edgespec.models.exit_heads import ExitHeads, ExitReading


@dataclass(frozen=True)
class EarlyVerdict:
    layer: int
    verdict: Verdict
    confidence: float
    elapsed_s: float  # since the verify forward started
    streamed: bool  # cleared its exit's threshold, so the client would act on it


class EarlyVerdictJudge:
    """Turns each exit reading of one verify pass into an early verdict, with the round's own
    draft block and uniforms, so an early verdict is the final rule applied to the exit's logits."""

    def __init__(
        self,
        exits: ExitHeads,
        draft_tokens: Sequence[int],
        params: SamplingParams,
        draft_probs: torch.Tensor | None = None,
        uniforms: RoundUniforms | None = None,
        on_streamed: Callable[[EarlyVerdict], None] | None = None,
    ) -> None:
        self._exits = exits
        self._on_streamed = on_streamed
        self._draft_tokens = list(draft_tokens)
        self._params = params
        self._draft_probs = draft_probs
        self._uniforms = uniforms
        self.verdicts: list[EarlyVerdict] = []

    def __call__(self, reading: ExitReading) -> EarlyVerdict:
        verdict = verdict_from_logits(reading.logits, self._draft_tokens, self._params, self._draft_probs, self._uniforms)
        confidence = verdict_confidence(reading.logits, verdict)
        early = EarlyVerdict(
            layer=reading.layer,
            verdict=verdict,
            confidence=confidence,
            elapsed_s=reading.elapsed_s,
            streamed=confidence >= self._exits.spec(reading.layer).threshold,
        )
        self.verdicts.append(early)
        if early.streamed and self._on_streamed is not None:
            self._on_streamed(early)
        return early

    @property
    def hint(self) -> EarlyVerdict | None:
        """The verdict a client would be acting on when the final one arrives: the last streamed
        one (a later confident exit refines or corrects an earlier one)."""
        streamed = [v for v in self.verdicts if v.streamed]
        return streamed[-1] if streamed else None
