"""A draft block as the round core sees it: the drafted token ids, plus what a driver attached.

The core reads only ``tokens`` (and, for runner-up branches, ``confidence`` and ``runner_up``).
``probs`` and ``candidates`` are the drivers' payload -- tensors in the real backends, one row per
drafted token -- that the core carries from the draft to the send untouched, except that it drops
a guess branch's first row along with its first token (``without_first``), so it never imports a
tensor library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DraftBlock:
    tokens: list[int]
    # Sampling: the [gamma, vocab] distributions the tokens were drawn from; None when greedy.
    probs: Any = None
    # Greedy: [gamma, k] ids, the draft's top-k at each drafted position, its own token first:
    # the only ids a candidate-id exit scores (None: not recorded).
    candidates: Any = None
    # Greedy: per drafted position, the draft's probability of its own token and its runner-up
    # id: where the block is likeliest to be rejected and with which correction, for the
    # pre-draft modes' runner-up branches (None: not recorded). Never sent to the server.
    confidence: list[float] | None = None
    runner_up: list[int] | None = None

    def without_first(self) -> "DraftBlock":
        """The block less its first token and that token's rows (a guess branch's first token is
        the bonus it assumes, not part of the block it ships)."""
        return DraftBlock(
            self.tokens[1:],
            None if self.probs is None else self.probs[1:],
            None if self.candidates is None else self.candidates[1:],
            None if self.confidence is None else self.confidence[1:],
            None if self.runner_up is None else self.runner_up[1:],
        )
