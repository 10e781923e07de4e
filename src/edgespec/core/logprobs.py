"""The target's log-probabilities of emitted tokens, as plain values.

Under speculation a token may come from an accepted draft position, a rejection's resample or the
bonus; whichever it was, its entry is the *target's* log-probability at that position (its raw
logits' log-softmax, before temperature or top-p), so an app reads the same numbers it would read
from the target decoding alone."""

from __future__ import annotations

from dataclasses import dataclass

# OpenAI's ceiling for top_logprobs; also what the wire accepts.
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class TokenLogprob:
    """One emitted token: its id, the target's log-probability of it, and the target's ``top``
    likeliest ids with theirs, likeliest first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def check_top_logprobs(top: int | None) -> None:
    """``top``: None (no log-probabilities) or how many alternatives each token carries."""
    if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS:
        raise ValueError(f"top logprobs must be in 0..{MAX_TOP_LOGPROBS}, got {top}")
