"""A verdict: what the target decided about one draft block.

``accepted`` draft tokens are kept and ``next_token`` follows them: the *recovered* token at the
first rejected position, or the *bonus* token when the whole block was accepted. It is a plain
value so the edge, the verifier and every driver compare verdicts (early against final, assumed
against decided) without tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Verdict:
    accepted: int
    next_token: int

    def committed(self, draft_tokens: Sequence[int]) -> list[int]:
        """The tokens this verdict commits: the accepted draft prefix, then the next token."""
        return list(draft_tokens[: self.accepted]) + [self.next_token]
