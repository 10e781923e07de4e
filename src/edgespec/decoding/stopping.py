"""Where generation ends inside a block: an EOS token or the max-new-tokens budget."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Sequence


@dataclass(frozen=True)
class Commit:
    tokens: list[int]
    finished: bool
    at_eos: bool = field(default=False, compare=False)

    @property
    def reason(self) -> str:
        """Why generation finished here: "eos", "length", or "" while it goes on."""
        return "eos" if self.at_eos else "length" if self.finished else ""


def clip_to_stop(tokens: Sequence[int], eos_ids: Collection[int], budget: int) -> Commit:
    """Keep ``tokens`` up to and including the first EOS, and at most ``budget`` of them.

    This is what `transformers` `generate` emits for the same tokens, so a speculative block that
    crosses an EOS or the token limit commits exactly what autoregressive decoding would have.
    """
    kept: list[int] = []
    for token in tokens:
        if len(kept) >= budget:
            return Commit(kept, finished=True)
        kept.append(int(token))
        if token in eos_ids:
            return Commit(kept, finished=True, at_eos=True)
    return Commit(kept, finished=len(kept) >= budget)
