"""The parts of the virtual-clock driver that stand for hardware: an event queue (the clock),
the link between an edge and the verifier, the verifier that batches forwards, and the edge's
one drafting thread. Each charges the costs its backend reports and does no I/O.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable

from edgespec.core.block import DraftBlock
from edgespec.core.edge_events import Draft
from edgespec.drivers.backend_interface import CloudBackend, CloudJob, EdgeBackend, JobKind

# Approximate wire sizes (bytes, gRPC framing included) of the protocol's messages: enough for a
# bandwidth term, which is microseconds at WAN rates.
OPEN_BYTES, OPENED_BYTES, EARLY_BYTES, FINAL_BYTES, TOKEN_BYTES, DROPPED_BYTES = 60, 60, 30, 40, 25, 15


def block_bytes(block: DraftBlock, tagged: bool) -> int:
    rows = 0 if block.probs is None else block.probs.shape[0] * 64 * 8
    candidates = 0 if block.candidates is None else block.candidates.numel() * 4
    return 20 + 4 * len(block.tokens) + rows + candidates + (12 if tagged else 0)


@dataclass(frozen=True)
class Link:
    one_way_s: float = 0.0
    bandwidth_bytes_per_s: float = math.inf
    # Round trips spent setting up a connection before the first message (TCP + HTTP/2).
    connect_rtts: float = 0.0

    def delay(self, nbytes: int) -> float:
        return self.one_way_s + nbytes / self.bandwidth_bytes_per_s


class EventQueue:
    """The virtual clock: callbacks run in time order (ties in the order they were scheduled)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def at(self, time: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (max(time, self.now), next(self._order), action))

    def run(self) -> None:
        while self._heap:
            self.now, _, action = heapq.heappop(self._heap)
            action()


class VirtualVerifier:
    """One forward at a time; whatever is waiting when it frees up runs as one batch."""

    def __init__(self, events: EventQueue, backend: CloudBackend, max_batch: int) -> None:
        self.events = events
        self.backend = backend
        self.max_batch = max_batch
        self.busy_s = 0.0
        self.forwards = 0
        self._queue: list[tuple[CloudJob, Callable[[Any, float, float], None]]] = []
        self._busy = False

    def submit(self, job: CloudJob, done: Callable[[Any, float, float], None]) -> None:
        """``done(result, start, end)`` runs when the job's forward starts (results are known
        then; the callback schedules what happens at ``end`` and at exits in between)."""
        self._queue.append((job, done))
        if not self._busy:
            self._next()

    def _next(self) -> None:
        if not self._queue:
            self._busy = False
            return
        head = self._queue[0][0].kind
        if head is JobKind.PREFILL:
            batch = [self._queue.pop(0)]
        else:
            # Drafts (cloud-sd) run the draft model, the rest the target: never in one pass.
            same = (
                (lambda kind: kind is JobKind.DRAFT)
                if head is JobKind.DRAFT
                else (lambda kind: kind in (JobKind.VERIFY, JobKind.DECODE))
            )
            batch = [entry for entry in self._queue if same(entry[0].kind)][: self.max_batch]
            taken = {id(entry) for entry in batch}  # by identity: jobs compare by value
            self._queue = [entry for entry in self._queue if id(entry) not in taken]
        self._busy = True
        start = self.events.now
        results, cost = self.backend.run([job for job, _ in batch])
        self.busy_s += cost
        self.forwards += 1
        end = start + cost
        for (job, done), result in zip(batch, results):
            done(result, start, end)
        self.events.at(end, self._next)


@dataclass
class _RunningDraft:
    """The draft on the edge's thread now: its result is known at once (the backend computed it),
    but it is delivered only at ``end`` -- or never, if cancelled first."""

    draft: Draft
    done: Callable[[DraftBlock, float, float], None]
    block: DraftBlock
    cost: float
    start: float
    end: float
    cancelled: bool = False
    over: bool = False


class VirtualEdge:
    """The device's drafting thread: one draft at a time, in order; a cancelled one stops at
    its next token."""

    def __init__(self, events: EventQueue, backend: EdgeBackend) -> None:
        self.events = events
        self.backend = backend
        self._queue: list[tuple[Draft, Callable[[DraftBlock, float, float], None]]] = []
        self._running: _RunningDraft | None = None

    def submit(self, draft: Draft, done: Callable[[DraftBlock, float, float], None]) -> None:
        self._queue.append((draft, done))
        if self._running is None:
            self._next()

    def cancel(self, draft_id: int) -> None:
        self._queue = [entry for entry in self._queue if entry[0].id != draft_id]
        running = self._running
        if running is not None and running.draft.id == draft_id and not running.cancelled:
            running.cancelled = True
            per_token = running.cost / max(1, len(running.block.tokens))
            end = min(running.end, self.events.now + per_token)
            self.events.at(end, lambda: self._finish(running))

    def _next(self) -> None:
        if not self._queue:
            self._running = None
            return
        draft, done = self._queue.pop(0)
        block, cost = self.backend.draft(draft.sequence, draft.gamma, draft.min_tokens)
        start = self.events.now
        running = _RunningDraft(draft, done, block, cost, start, start + cost)
        self._running = running
        self.events.at(start + cost, lambda: self._finish(running))

    def _finish(self, running: _RunningDraft) -> None:
        if running.over:
            return
        running.over = True
        if not running.cancelled:
            running.done(running.block, running.start, self.events.now)
        self._next()
