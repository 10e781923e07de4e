"""Link profiles: how far away the cloud is, as one-way delay, jitter, a bandwidth cap and loss.

Loss is modelled as delay (a TCP retransmission), never as dropped bytes: the application above
a TCP socket only ever sees late data, so that is all an emulator between two sockets can show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Mapping

__all__ = ["LinkProfile", "PROFILES", "resolve_profile", "OVERRIDE_KEYS"]


@dataclass(frozen=True)
class LinkProfile:
    """One direction's link; both directions of a connection use the same profile.

    `jitter_ms` is the half-width of a uniform spread around `one_way_delay_ms` (so "60 ± 15 ms"
    is `one_way_delay_ms=60, jitter_ms=15`); a sampled delay never goes below zero.
    `bandwidth_mbit` caps payload throughput per direction in 10**6 bit/s (None: no cap).
    `loss` is the probability that a chunk needs a retransmission, costing `loss_penalty_ms`.
    """

    name: str
    one_way_delay_ms: float
    jitter_ms: float = 0.0
    bandwidth_mbit: float | None = None
    loss: float = 0.0
    loss_penalty_ms: float = 200.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("link profile name must not be empty")
        _check_non_negative("one_way_delay_ms", self.one_way_delay_ms)
        _check_non_negative("jitter_ms", self.jitter_ms)
        _check_non_negative("loss_penalty_ms", self.loss_penalty_ms)
        if self.bandwidth_mbit is not None:
            _check_number("bandwidth_mbit", self.bandwidth_mbit)
            if self.bandwidth_mbit <= 0:
                raise ValueError(f"bandwidth_mbit must be > 0 Mbit/s (or None for no cap), got {self.bandwidth_mbit!r}")
        _check_number("loss", self.loss)
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError(f"loss is a probability and must be in [0, 1], got {self.loss!r}")

    @property
    def rtt_ms(self) -> float:
        """Nominal round-trip time of a small message (no jitter, no loss, no serialization)."""
        return 2.0 * self.one_way_delay_ms

    @property
    def bytes_per_second(self) -> float | None:
        return None if self.bandwidth_mbit is None else self.bandwidth_mbit * 1e6 / 8.0

    def describe(self) -> str:
        """One line for logs and reports."""
        parts = [f"{self.one_way_delay_ms:g} ms one-way"]
        if self.jitter_ms:
            parts[0] = f"{self.one_way_delay_ms:g} ± {self.jitter_ms:g} ms one-way"
        parts.append("no bandwidth cap" if self.bandwidth_mbit is None else f"{self.bandwidth_mbit:g} Mbit/s")
        if self.loss:
            parts.append(f"loss {self.loss:g} (+{self.loss_penalty_ms:g} ms each)")
        return f"{self.name}: " + ", ".join(parts)


def _check_number(field: str, value: object) -> None:
    # bool is an int; a True delay is certainly a mistake, and NaN/inf would poison the schedule.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number, got {value!r}")


def _check_non_negative(field: str, value: object) -> None:
    _check_number(field, value)
    if value < 0:  # type: ignore[operator]
        raise ValueError(f"{field} must be >= 0, got {value!r}")


# Cellular keeps loss at 0 by default so benchmark runs stay comparable; pass `loss` to add it.
PROFILES: dict[str, LinkProfile] = {
    "lan": LinkProfile("lan", one_way_delay_ms=1.0),
    "wan": LinkProfile("wan", one_way_delay_ms=25.0, bandwidth_mbit=20.0),
    "cellular": LinkProfile("cellular", one_way_delay_ms=60.0, jitter_ms=15.0, bandwidth_mbit=5.0),
}

# Override keys accepted by `resolve_profile`; `delay_ms` is the short (command-line) spelling.
_ALIASES = {"delay_ms": "one_way_delay_ms"}
OVERRIDE_KEYS = frozenset({f.name for f in fields(LinkProfile)} - {"name"}) | frozenset(_ALIASES)


def resolve_profile(name: str, overrides: Mapping[str, float | None] | None = None) -> LinkProfile:
    """The named profile with explicit overrides applied.

    Keys: `delay_ms` (or `one_way_delay_ms`), `jitter_ms`, `bandwidth_mbit`, `loss`,
    `loss_penalty_ms`. A None value means "keep the profile's" so parsed command-line options
    can be passed straight through; `bandwidth_mbit` of 0 (or inf) removes the cap.
    """
    profile = PROFILES.get(name)
    if profile is None:
        raise ValueError(f"unknown link profile {name!r}; choose one of: {', '.join(PROFILES)}")
    changes: dict[str, float | None] = {}
    for key, value in (overrides or {}).items():
        if key not in OVERRIDE_KEYS:
            raise ValueError(f"unknown link override {key!r}; allowed: {', '.join(sorted(OVERRIDE_KEYS))}")
        if value is None:
            continue
        field = _ALIASES.get(key, key)
        if field in changes and changes[field] != value:
            raise ValueError(f"link override {field!r} given twice with different values")
        changes[field] = value
    if not changes:
        return profile
    if "bandwidth_mbit" in changes:
        changes["bandwidth_mbit"] = _uncapped_as_none(changes["bandwidth_mbit"])
    label = ",".join(f"{key}={value:g}" if value is not None else f"{key}=none" for key, value in changes.items())
    return replace(profile, name=f"{name}[{label}]", **changes)  # type: ignore[arg-type]


def _uncapped_as_none(value: float | None) -> float | None:
    # 0 and inf are the natural ways to say "no cap" on a command line, where None means "unset".
    if isinstance(value, (int, float)) and not isinstance(value, bool) and (value == 0 or value == math.inf):
        return None
    return value
