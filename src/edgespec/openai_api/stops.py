"""Stop strings, honoured exactly at the boundary whatever the chunking of the text.

A round commits several tokens at once and a token holds several characters, so a stop string
can end inside a chunk, span two chunks, or end inside a token. The scanner sees the text as it
grows and emits only text that is certainly before any stop: the cut is at the earliest start
of any stop string in the whole text (what cutting the finished text would give), so text that
could still turn out to begin a stop is held back until it cannot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """The finished text cut at the earliest occurrence of any stop string; and whether one occurred."""
    starts = [i for i in (text.find(stop) for stop in stops) if i >= 0]
    return (text[: min(starts)], True) if starts else (text, False)


@dataclass
class ScanResult:
    text: str  # safe to emit now
    stopped: bool  # a stop string was found: nothing after ``text`` is ever emitted


class StopScanner:
    def __init__(self, stops: Sequence[str]) -> None:
        if any(not stop for stop in stops):
            raise ValueError("stop strings must not be empty")
        self.stops = tuple(stops)
        self._held = ""  # emitted-nothing tail: could be the start of a stop string
        self.stopped = False

    def push(self, text: str) -> ScanResult:
        """Add text; what can be emitted now."""
        return self._scan(text, final=False)

    def finish(self) -> ScanResult:
        """The text is complete: release what was held back (or cut at a pending stop)."""
        return self._scan("", final=True)

    def _scan(self, text: str, final: bool) -> ScanResult:
        if self.stopped:
            return ScanResult("", True)
        buffer = self._held + text
        if not self.stops:
            self._held = ""
            return ScanResult(buffer, False)
        # Text emitted earlier never holds the start of a stop (it would have been held), so
        # only the buffer needs scanning.
        matches = [i for i in (buffer.find(stop) for stop in self.stops) if i >= 0]
        complete = min(matches) if matches else None
        partial = None if final else self._partial_start(buffer)
        if complete is not None and (partial is None or complete <= partial):
            self.stopped = True
            self._held = ""
            return ScanResult(buffer[:complete], True)
        keep_from = len(buffer) if partial is None else partial
        self._held = buffer[keep_from:]
        return ScanResult(buffer[:keep_from], False)

    def _partial_start(self, buffer: str) -> int | None:
        """The earliest index from which the buffer's tail is a proper prefix of a stop string."""
        longest = max(len(stop) for stop in self.stops) - 1
        for start in range(max(0, len(buffer) - longest), len(buffer)):
            tail = buffer[start:]
            if any(len(tail) < len(stop) and stop.startswith(tail) for stop in self.stops):
                return start
        return None
