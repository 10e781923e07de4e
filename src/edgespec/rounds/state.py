"""One generation's state on the edge: the committed text and the accounting that every session of
it adds to (the first, each one re-opened after an outage, and edge-only stretches between)."""

from __future__ import annotations

from typing import Sequence

from edgespec.decoding.config import GenerationConfig
from edgespec.decoding.gamma_policy import AdaptiveGamma
from edgespec.decoding.modes import Mode
from edgespec.decoding.stats import GenerationStats, TimelineEvent


class Generation:
    def __init__(self, prompt_ids: Sequence[int], mode: Mode, config: GenerationConfig) -> None:
        if not prompt_ids:
            raise ValueError("the prompt must contain at least one token")
        self.mode = mode
        self.config = config
        self.prompt_len = len(prompt_ids)
        self.committed = [int(t) for t in prompt_ids]
        self.stats = GenerationStats(mode=mode.value, prompt_tokens=len(prompt_ids))
        # The server's EOS set replaces this once a session opens; until then (and for edge-only)
        # the caller's decides.
        self.eos: frozenset[int] = config.eos_ids
        self.finished = False
        self.falling_back = False  # tokens are being decided by the draft alone
        self.gamma_policy: AdaptiveGamma | None = config.gamma_policy()

    @property
    def produced(self) -> int:
        return len(self.committed) - self.prompt_len

    def budget(self, extra: int = 0) -> int:
        return self.config.max_new_tokens - self.produced - extra

    def gamma(self, extra: int = 0) -> int:
        """The next block's length: the policy's choice (or the fixed γ), within the budget left
        after ``extra`` more tokens (an assumed verdict's)."""
        chosen = self.gamma_policy.next_gamma() if self.gamma_policy else self.config.gamma
        return max(1, min(chosen, self.budget(extra)))

    def commit(self, tokens: list[int], at: float) -> None:
        if tokens and self.stats.new_tokens == 0:
            self.stats.ttft_s = at
        if self.falling_back and tokens:
            start, _ = self.stats.fallback_spans[-1]
            self.stats.fallback_spans[-1] = (start, self.produced + len(tokens))
            self.stats.fallback_tokens += len(tokens)
        self.committed.extend(tokens)
        self.stats.new_tokens += len(tokens)

    def finish(self, reason: str) -> None:
        self.finished = True
        self.stats.finish_reason = reason

    def record(self, actor: str, what: str, start_s: float, end_s: float, round_index: int | None = None) -> None:
        index = self.stats.rounds if round_index is None else round_index
        self.stats.timeline.append(TimelineEvent(actor, what, start_s, end_s, index))

    @property
    def new_tokens(self) -> list[int]:
        return self.committed[self.prompt_len :]
