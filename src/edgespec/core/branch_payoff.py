"""Whether a pre-draft branch pays, priced from this session's own record.

A branch is a pre-draft of the next block on one assumed verdict of the round in flight: the
draft's *guess* (every token accepted, its own next token as the bonus) or a *runner-up* guess (a
rejection where the draft was least sure, corrected to its runner-up token). ``BranchPayoff``
estimates how often each kind is right and what a wrong one costs on the edge's one draft thread,
so ``EdgeRounds`` drafts a branch only while it pays.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgespec.core.block import DraftBlock
from edgespec.core.verdict import Verdict


@dataclass
class Branch:
    """A pre-draft of the next block on one assumed verdict of the round in flight. The guess
    branch drafts from the block itself: its first token is the draft's guess of the bonus, so its
    verdict is known only once it has drafted (``assumed`` is None until then)."""

    id: int
    assumed: Verdict | None
    source: str  # "guess" | "exit <layer>"
    block: DraftBlock | None = None
    draft_s: float = 0.0
    tagged: bool = False  # shipped before the final verdict (pipelined)


class BranchPayoff:
    """Whether guessing pays in this session. A right guess saves the draft time the verify and
    the round trip hide (at most). A wrong one costs only what it delays the real draft: nothing
    when the guess has finished drafting before the verdict arrives (the edge was idle anyway),
    else the draft step it is stopped in. A guess is right when the whole block is accepted and
    the bonus is the draft's own next token: about α^(γ+1) for a per-token acceptance α,
    estimated (decayed) from every round, guessed or not."""

    def __init__(self, decay: float = 0.8) -> None:
        self.decay = decay
        self._accepted = 0.0
        self._rejected = 0.0
        self.step_s: float | None = None  # draft seconds per token (the first block, with its prefill, excluded)
        self.wait_s: float | None = None  # block sent -> final verdict
        self._runner_up: dict[int, tuple[float, float]] = {}  # rank -> decayed (right, seen)

    def _mix(self, old: float | None, new: float) -> float:
        return new if old is None else self.decay * old + (1 - self.decay) * new

    def observe_round(self, gamma: int, accepted: int, draft_s: float, wait_s: float, first: bool) -> None:
        self._accepted = self.decay * self._accepted + accepted
        self._rejected = self.decay * self._rejected + (1 if accepted < gamma else 0)
        if gamma and not first:
            self.step_s = self._mix(self.step_s, draft_s / gamma)
        self.wait_s = self._mix(self.wait_s, wait_s)

    def hit_rate(self, block: int) -> float:
        """A guess on a block of ``block`` tokens is right with about α^(block + 1)."""
        seen = self._accepted + self._rejected
        alpha = self._accepted / seen if seen else 0.8
        return alpha ** (block + 1)

    def pays(self, hit_rate: float, queued_tokens: int, tokens: int) -> bool:
        """Draft a branch of ``tokens`` right with ``hit_rate``, behind ``queued_tokens`` already
        queued on the edge's one draft thread? A hit saves what it drafted before the verdict (a
        branch still drafting then becomes the block); a miss wastes the step it is stopped in,
        when it is still drafting at the verdict, else nothing (the edge was idle)."""
        if self.step_s is None or self.wait_s is None:
            return True
        start_s = queued_tokens * self.step_s
        saved_s = min(tokens * self.step_s, max(0.0, self.wait_s - start_s))
        wasted_s = self.step_s if start_s + tokens * self.step_s > self.wait_s else 0.0
        return saved_s > 0 and hit_rate * saved_s >= (1 - hit_rate) * wasted_s

    def observe_runner_ups(self, right: list[bool]) -> None:
        """Whether each runner-up guess (by rank: the least sure position first) was the verdict."""
        for rank, hit in enumerate(right):
            hits, seen = self._runner_up.get(rank, (0.0, 0.0))
            self._runner_up[rank] = (self.decay * hits + hit, self.decay * seen + 1)

    def runner_up_rate(self, rank: int) -> float:
        hits, seen = self._runner_up.get(rank, (0.0, 0.0))
        # Before any record: about the rate held-out ShareGPT rounds show for the first runner-up.
        return hits / seen if seen else 0.15 / (rank + 1)


def runner_up_verdicts(block: DraftBlock) -> list[Verdict]:
    """Each drafted position's rejection, corrected to the draft's runner-up there, likeliest
    first by the draft's own confidences: P(reject at w) ≈ c_0 ⋯ c_(w-1) · (1 − c_w). (On
    held-out ShareGPT rounds this order makes the first one right more often than taking the
    least sure position alone.)"""
    assert block.confidence is not None and block.runner_up is not None
    likelihood, reach = [], 1.0
    for sure in block.confidence:
        likelihood.append(reach * (1.0 - sure))
        reach *= sure
    order = sorted(range(len(block.tokens)), key=lambda w: -likelihood[w])
    return [Verdict(w, block.runner_up[w]) for w in order if block.runner_up[w] != block.tokens[w]]
