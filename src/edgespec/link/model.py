"""The arithmetic of one direction of an emulated link: when each piece handed to it comes out.

Per piece of at most 16 KiB:

    start      = max(read_time, busy_until)            # one transmitter per direction
    busy_until = start + len * 8 / bandwidth           # serialization caps throughput
    deliver    = max(busy_until + delay + jitter (+ loss penalty), last_delivery)

The `max` with the last delivery keeps FIFO order: TCP never reorders, so a late chunk (jitter,
a "retransmission") holds back everything behind it, as head-of-line blocking does.
"""

from __future__ import annotations

import random

from edgespec.link.profiles import LinkProfile

__all__ = ["LinkModel", "direction_rng", "MAX_PIECE_BYTES"]

MAX_PIECE_BYTES = 16 * 1024


def direction_rng(seed: int, connection: int, direction: str) -> random.Random:
    """The random stream of one direction of one connection.

    Separate streams keep a connection's jitter independent of how the other direction's reads
    happened to be split; string seeds hash the same in every process (no PYTHONHASHSEED).
    """
    # The package's old name stays in the seed string: renaming it would change every emulated run.
    return random.Random(f"edgespec.netem:{seed}:{connection}:{direction}")


class LinkModel:
    """When each piece written into one direction of the link comes out (pure, no I/O)."""

    def __init__(self, profile: LinkProfile, rng: random.Random) -> None:
        self.profile = profile
        self._rng = rng
        self._delay_s = profile.one_way_delay_ms / 1000.0
        self._jitter_s = profile.jitter_ms / 1000.0
        self._penalty_s = profile.loss_penalty_ms / 1000.0
        self._bytes_per_s = profile.bytes_per_second
        self._busy_until = float("-inf")
        self._last_delivery = float("-inf")
        self.loss_events = 0

    def hold(self, until: float) -> None:
        """Nothing may start transmitting before `until` (used for the TCP handshake)."""
        self._busy_until = max(self._busy_until, until)

    def schedule(self, now: float, nbytes: int) -> float:
        """Delivery time of `nbytes` handed to the link at `now` (0 bytes: a FIN)."""
        start = max(now, self._busy_until)
        sent = start + (nbytes / self._bytes_per_s if self._bytes_per_s else 0.0)
        self._busy_until = sent
        deliver = max(sent + self._propagation(), self._last_delivery)
        self._last_delivery = deliver
        return deliver

    def _propagation(self) -> float:
        # Draw jitter and loss only when enabled so that turning one on does not shift the
        # other's random sequence.
        delay = self._delay_s
        if self._jitter_s:
            delay = max(0.0, delay + self._rng.uniform(-self._jitter_s, self._jitter_s))
        if self.profile.loss and self._rng.random() < self.profile.loss:
            self.loss_events += 1
            delay += self._penalty_s
        return delay
