"""Where generation ends inside a block: an EOS token or the max-new-tokens budget.

Every machine and every driver ends a generation through ``clip_to_stop``, so a mode finishes
with the same ``FinishReason`` whichever driver runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Collection, Sequence


class FinishReason(StrEnum):
    """Why a generation ended (a ``str``, so it compares and serialises as its value)."""

    EOS = "eos"  # the target emitted an end-of-sequence token
    LENGTH = "length"  # max_new_tokens reached
    GOING_ON = ""  # not finished (falsy, so ``reason or FinishReason.LENGTH`` reads naturally)


@dataclass(frozen=True)
class ClippedTokens:
    """The tokens of a block that may be committed, and whether they end the generation."""

    tokens: list[int]
    finished: bool
    at_eos: bool = field(default=False, compare=False)

    @property
    def reason(self) -> FinishReason:
        """Why generation finished here, or ``GOING_ON`` while it goes on."""
        return FinishReason.EOS if self.at_eos else FinishReason.LENGTH if self.finished else FinishReason.GOING_ON


def clip_to_stop(tokens: Sequence[int], eos_ids: Collection[int], budget: int) -> ClippedTokens:
    """Keep ``tokens`` up to and including the first EOS, and at most ``budget`` of them.

    This is what `transformers` `generate` emits for the same tokens, so a speculative block that
    crosses an EOS or the token limit commits exactly what autoregressive decoding would have.
    """
    kept: list[int] = []
    for token in tokens:
        if len(kept) >= budget:
            return ClippedTokens(kept, finished=True)
        kept.append(int(token))
        if token in eos_ids:
            return ClippedTokens(kept, finished=True, at_eos=True)
    return ClippedTokens(kept, finished=len(kept) >= budget)


def finish_reason_of(committed: Sequence[int], produced: int, eos_ids: Collection[int]) -> FinishReason:
    """Why a text that a receive-only session was told is finished ended: at EOS when its last
    generated token is one, else by length (the server stops only at EOS or the budget)."""
    return FinishReason.EOS if produced and committed[-1] in eos_ids else FinishReason.LENGTH
