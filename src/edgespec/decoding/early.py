"""Early verdicts: what each exit would decide, how sure it is, and whether it is streamed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from edgespec.core.config import SamplingParams
from edgespec.core.verdict import Verdict
from edgespec.decoding.verification import RoundUniforms, verdict_confidence, verdict_from_logits
from edgespec.models.exit_heads import ExitHeads, ExitReading

# next_token of a candidate exit's verdict that accepts the whole block (the bonus is not scored).
UNSCORED_BONUS = -1


def with_draft_tokens(candidates: torch.Tensor, tokens: Sequence[int]) -> torch.Tensor:
    """Candidate rows [gamma, k] with each row's draft token first and no id twice (a client's
    rows should be so; one that is not must not make the exit unable to accept its token). A row
    left short is padded with its draft token, which cannot change the row's winner."""
    width = candidates.shape[1]
    rows = []
    for row, token in zip(candidates.tolist(), tokens):
        unique = list(dict.fromkeys([token] + row))[:width]
        rows.append(unique + [token] * (width - len(unique)))
    return torch.tensor(rows, dtype=torch.long)


def candidate_verdict(
    scores: torch.Tensor, candidate_ids: torch.Tensor, draft_tokens: Sequence[int]
) -> tuple[Verdict, float]:
    """The greedy verdict an exit gives from the logits of only the draft's candidate ids
    (``scores[i, j]`` for ``candidate_ids[i, j]``, row i deciding draft token i, which is
    ``candidate_ids[i, 0]``): accept while the draft token scores highest among its row; at the
    first row where another candidate wins, that candidate is the correction. Confidence: the
    lowest top-1 probability (softmax over each row's candidates) of the rows that decide it. A
    block accepted whole gives ``next_token = UNSCORED_BONUS``."""
    probs = scores.float().softmax(dim=-1)
    best = probs.argmax(dim=-1).tolist()
    top = probs.max(dim=-1).values.tolist()
    for i, token in enumerate(draft_tokens):
        winner = int(candidate_ids[i, best[i]])
        if winner != token:
            return Verdict(i, winner), min(top[: i + 1])
    return Verdict(len(draft_tokens), UNSCORED_BONUS), min(top[: len(draft_tokens)])


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
        if reading.candidate_ids is not None:
            verdict, confidence = candidate_verdict(reading.logits, reading.candidate_ids, self._draft_tokens)
        else:
            verdict = verdict_from_logits(
                reading.logits, self._draft_tokens, self._params, self._draft_probs, self._uniforms
            )
            confidence = verdict_confidence(reading.logits, verdict)
        early = EarlyVerdict(
            layer=reading.layer,
            verdict=verdict,
            confidence=confidence,
            elapsed_s=reading.elapsed_s,
            # A candidate exit that accepts the whole block has not scored the bonus token: it
            # says no more than the send-time guess does, so it is kept for the record only.
            streamed=verdict.next_token != UNSCORED_BONUS and confidence >= self._exits.spec(reading.layer).threshold,
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
