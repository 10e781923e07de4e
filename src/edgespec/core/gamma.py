"""Adaptive draft length: pick each round's γ from a cost model of what this session measured.

A round that drafts γ tokens costs ``γ·d + v(γ) + r`` seconds (d: draft time per token on the
edge, v(γ): the server's verify time for γ drafts, r: everything else — link round trip,
queueing, framework) and commits ``(1 - α^(γ+1)) / (1 - α)`` tokens on average when each draft
token is accepted with probability α. The policy picks the γ with the most tokens per second.

Why adaptive: the best γ differs by orders of magnitude between deployments. On a GPU the
verify costs nearly the same for 1 or 8 drafts, so long blocks are nearly free; on a CPU
target without native bf16 it grows about linearly with γ, so long blocks mostly buy rejected
work. Acceptance differs by prompt (code vs chat) too.

Estimates decay (recent rounds weigh more) so a session follows its text. v(γ) is kept per γ;
for a γ never tried it is extrapolated linearly from the ones tried, or taken as flat while only
one was tried — optimistic, so the policy tries a longer block once and learns its real cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Decayed:
    """An exponentially decayed mean: each new sample weighs ``1 - decay`` of the total."""

    decay: float
    total: float = 0.0
    weight: float = 0.0

    def add(self, value: float, weight: float = 1.0) -> None:
        self.total = self.decay * self.total + value * weight
        self.weight = self.decay * self.weight + weight

    @property
    def mean(self) -> float | None:
        return self.total / self.weight if self.weight > 0 else None


@dataclass
class AdaptiveGamma:
    initial: int = 4
    max_gamma: int = 8
    min_gamma: int = 1
    decay: float = 0.8
    _accepted: float = 0.0  # decayed accepted draft tokens
    _rejected: float = 0.0  # decayed rejections (rounds that stopped short of their block)
    _draft_per_token: _Decayed = field(init=False)
    _rest: _Decayed = field(init=False)
    _verify: dict[int, _Decayed] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.min_gamma <= self.initial <= self.max_gamma:
            raise ValueError(
                f"need 1 <= min_gamma <= initial <= max_gamma, got {self.min_gamma}, {self.initial}, {self.max_gamma}"
            )
        self._draft_per_token = _Decayed(self.decay)
        self._rest = _Decayed(self.decay)

    def observe(self, gamma: int, accepted: int, draft_s: float, verify_s: float, round_s: float) -> None:
        """One finished round: γ drafted, how many accepted, the edge's draft time, the server's
        verify time, and the round's whole wall time (draft start -> verdict received)."""
        if gamma < 1 or not 0 <= accepted <= gamma:
            raise ValueError(f"a round needs gamma >= 1 and 0 <= accepted <= gamma, got {gamma}, {accepted}")
        # A round is a geometric sample: `accepted` successes, then one failure unless the
        # whole block was accepted (then censored). Counting both gives the MLE of α.
        self._accepted = self.decay * self._accepted + accepted
        self._rejected = self.decay * self._rejected + (1 if accepted < gamma else 0)
        self._draft_per_token.add(draft_s / gamma)
        self._verify.setdefault(gamma, _Decayed(self.decay)).add(verify_s)
        self._rest.add(max(0.0, round_s - draft_s - verify_s))

    @property
    def acceptance(self) -> float | None:
        seen = self._accepted + self._rejected
        return self._accepted / seen if seen > 0 else None

    def verify_s(self, gamma: int) -> float:
        tried = {g: v.mean for g, v in self._verify.items() if v.mean is not None}
        if gamma in tried:
            return tried[gamma]  # type: ignore[return-value]
        if len(tried) == 1:
            return next(iter(tried.values()))  # type: ignore[return-value]
        # Least-squares line through the tried block lengths.
        xs, ys = list(tried), list(tried.values())
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)  # type: ignore[arg-type]
        spread = sum((x - mean_x) ** 2 for x in xs)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread  # type: ignore[operator]
        return max(0.0, mean_y + slope * (gamma - mean_x))

    def expected_tokens(self, gamma: int) -> float:
        alpha = self.acceptance
        assert alpha is not None
        if alpha >= 1.0:
            return gamma + 1.0
        return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)

    def tokens_per_s(self, gamma: int) -> float:
        cost = gamma * (self._draft_per_token.mean or 0.0) + self.verify_s(gamma) + (self._rest.mean or 0.0)
        return self.expected_tokens(gamma) / cost if cost > 0 else float("inf")

    def next_gamma(self) -> int:
        if self.acceptance is None:
            return self.initial
        return max(range(self.min_gamma, self.max_gamma + 1), key=self.tokens_per_s)
