"""The server's compute loop: gathers the forward passes that sessions are waiting on and runs
them as batched forwards of the one shared target model.

Each session has at most one job in flight (it waits for its verdict before the next block), so
whatever is queued when the model frees up is one job per waiting session: those become one
batch. Nothing waits for a batch to fill (no added latency at low load); under load the batch
grows by itself, because sessions queue up while the previous forward runs. A prefill runs alone:
padding every verify row out to a prompt's length would cost more than it saves.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

import torch

from edgespec.models.target import ScoreRequest, TargetRuntime
from edgespec.server.refusals import Refused

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class AdmissionLimits:
    max_sessions: int = 64  # open sessions; one more is refused with BUSY
    max_queued: int = 256  # jobs waiting for the model; one more is refused with BUSY
    max_batch: int = 32  # sessions per forward pass

    def __post_init__(self) -> None:
        if min(self.max_sessions, self.max_queued, self.max_batch) < 1:
            raise ValueError("admission limits must be >= 1")


@dataclass
class Job(Generic[T]):
    """One session's forward: what to score, and what to do with the logits (on the compute
    thread, right after the forward)."""

    request: ScoreRequest | None
    finish: Callable[[torch.Tensor], T]
    solo: bool = False
    # Compute on the server's processor that is not a target forward (cloud-sd's own draft): run
    # alone on this thread instead of ``request`` (so never beside a target forward), timed as one.
    run: Callable[[], T] | None = None

    @classmethod
    def other(cls, run: Callable[[], T]) -> "Job[T]":
        return cls(None, finish=lambda logits: run(), solo=True, run=run)


@dataclass(frozen=True)
class JobResult(Generic[T]):
    value: T
    forward_ms: float  # the whole (batched) forward this job rode in
    queued_ms: float  # submitted -> its forward started
    batch_size: int


@dataclass
class SchedulerStats:
    forwards: int = 0
    jobs: int = 0
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)

    @property
    def largest_batch(self) -> int:
        return max(self.batch_sizes, default=0)


@dataclass
class _Entry:
    job: Job
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    submitted: float
    cancelled: bool = False


class BatchScheduler:
    def __init__(self, runtime: TargetRuntime, limits: AdmissionLimits = AdmissionLimits()) -> None:
        self.runtime = runtime
        self.limits = limits
        self.stats = SchedulerStats()
        self._queue: collections.deque[_Entry] = collections.deque()
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, daemon=True, name="verify")
        self._thread.start()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(self, job: Job[T]) -> JobResult[T]:
        loop = asyncio.get_running_loop()
        entry = _Entry(job, loop.create_future(), loop, time.perf_counter())
        with self._wake:
            if self._closed:
                raise Refused("BUSY", "the server is shutting down")
            if len(self._queue) >= self.limits.max_queued:
                raise Refused("BUSY", f"the server is busy ({len(self._queue)} rounds queued); retry later")
            self._queue.append(entry)
            self._wake.notify()
        try:
            return await entry.future
        except asyncio.CancelledError:
            entry.cancelled = True  # a queued job of a vanished session is skipped, not computed
            raise

    def close(self) -> None:
        if self.stats.forwards:
            logger.info(
                "served %d rounds in %d forward passes (sessions per pass: %s)",
                self.stats.jobs, self.stats.forwards, dict(sorted(self.stats.batch_sizes.items())),
            )
        with self._wake:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._wake.notify()
        for entry in pending:
            _post(entry, _cancel)

    def _next_batch(self) -> list[_Entry] | None:
        with self._wake:
            while True:
                while self._queue and self._queue[0].cancelled:
                    self._queue.popleft()
                if self._queue or self._closed:
                    break
                self._wake.wait()
            if self._closed:
                return None
            if self._queue[0].job.solo:
                return [self._queue.popleft()]
            batch: list[_Entry] = []
            kept: collections.deque[_Entry] = collections.deque()
            while self._queue:
                entry = self._queue.popleft()
                if entry.cancelled:
                    continue
                if entry.job.solo or len(batch) >= self.limits.max_batch:
                    kept.append(entry)
                else:
                    batch.append(entry)
            self._queue = kept
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(batch)
            # Drop the batch before blocking for the next one: its jobs reference the sessions'
            # caches, which must be freed the moment their sessions end.
            del batch

    def _run(self, batch: list[_Entry]) -> None:
        started = time.perf_counter()
        if batch[0].job.run is not None:  # solo, so alone in its batch
            self._run_other(batch[0], started)
            return
        try:
            all_logits = self.runtime.score_batch([entry.job.request for entry in batch])
        except Exception as error:  # noqa: BLE001 - every waiting session hears of it
            logger.exception("a batched forward of %d sessions failed", len(batch))
            for entry in batch:
                _post(entry, _fail, error)
            return
        forward_ms = (time.perf_counter() - started) * 1000
        self.stats.forwards += 1
        self.stats.jobs += len(batch)
        self.stats.batch_sizes[len(batch)] += 1
        for entry, logits in zip(batch, all_logits):
            try:
                value = entry.job.finish(logits)
            except Exception as error:  # noqa: BLE001 - only this session fails
                _post(entry, _fail, error)
                continue
            _post(entry, _resolve, JobResult(value, forward_ms, (started - entry.submitted) * 1000, len(batch)))
        if len(batch) > 1:
            logger.debug("batched forward: %d sessions in %.1f ms", len(batch), forward_ms)

    def _run_other(self, entry: _Entry, started: float) -> None:
        assert entry.job.run is not None
        try:
            value = entry.job.run()
        except Exception as error:  # noqa: BLE001 - only this session fails
            _post(entry, _fail, error)
            return
        _post(entry, _resolve, JobResult(value, (time.perf_counter() - started) * 1000, (started - entry.submitted) * 1000, 1))


def _post(entry: _Entry, action: Callable[..., None], *args: object) -> None:
    try:
        entry.loop.call_soon_threadsafe(action, entry.future, *args)
    except RuntimeError:  # that session's event loop is already closed: nobody is waiting
        pass


def _resolve(future: asyncio.Future, result: object) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _cancel(future: asyncio.Future) -> None:
    if not future.done():
        future.cancel()
