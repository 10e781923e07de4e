"""The bounded delay line that holds one direction's pieces until the link model delivers them."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable, Iterator

from edgespec.link.model import MAX_PIECE_BYTES

__all__ = ["DelayLine", "split_pieces"]


class DelayLine:
    """FIFO of (delivery time, piece) between one reader and one writer; None marks EOF.

    Bounded in bytes so a fast sender is pushed back (through the socket buffers) instead of
    the emulator buffering without limit.
    """

    def __init__(self, limit_bytes: int) -> None:
        self._items: deque[tuple[float, bytes | None]] = deque()
        self._queued = 0
        self._limit = limit_bytes
        self._not_empty = asyncio.Event()
        self._has_space = asyncio.Event()
        self._has_space.set()

    async def put(self, piece: bytes | None, schedule: Callable[[int], float]) -> None:
        while self._queued >= self._limit:
            self._has_space.clear()
            await self._has_space.wait()
        # Scheduled only once it is in: time spent waiting for space is the sender's, not the link's.
        size = len(piece) if piece else 0
        self._items.append((schedule(size), piece))
        self._queued += size
        self._not_empty.set()

    async def next_delivery(self) -> float:
        while not self._items:
            self._not_empty.clear()
            await self._not_empty.wait()
        return self._items[0][0]

    def pop_due(self, now: float) -> tuple[list[bytes], bool]:
        """Pieces due at `now`, and whether EOF came due after them."""
        pieces: list[bytes] = []
        eof = False
        while self._items and self._items[0][0] <= now:
            _, piece = self._items.popleft()
            if piece is None:
                eof = True
                break
            pieces.append(piece)
            self._queued -= len(piece)
        if self._queued < self._limit:
            self._has_space.set()
        return pieces, eof


def split_pieces(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for offset in range(0, len(data), MAX_PIECE_BYTES):
        yield bytes(view[offset : offset + MAX_PIECE_BYTES])
