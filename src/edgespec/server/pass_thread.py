"""The pass thread: the one thread that runs the shared target model. Sessions queue jobs on it
(``BatchScheduler.enqueue``); whenever the model frees up, it asks the planner (``planner.py``)
which queued jobs ride in the next batched forward, runs that pass, records its statistics
(``pass_stats.py``), and hands each finished job's result back to its session's event loop.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch

from edgespec.models.target import ScoreRequest, TargetRuntime
from edgespec.server.jobs import Job, JobResult, prefill_chunk_request, unfed_tokens
from edgespec.server.limits import AdmissionLimits
from edgespec.server.metrics import NoMetrics, VerifierMetrics
from edgespec.server.pass_stats import PassStats, SchedulerStats
from edgespec.server.planner import Candidate, plan_pass, prefill_turn_due
from edgespec.server.refusals import Refused

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _QueuedJob:
    """A job waiting for (or between the chunks of) its passes, and where its result goes."""

    job: Job
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    order: int  # submission order: the queue is kept sorted by it (oldest first)
    submitted: float
    submitted_pass: int  # passes started before it was queued
    cancelled: bool = False
    first_started: float | None = None
    waited_passes: int = 0
    forward_ms: float = 0.0
    passes: int = 0


@dataclass(frozen=True)
class _Row:
    """One queued job's row in a pass: what it feeds this time."""

    queued: _QueuedJob
    request: ScoreRequest | None  # None: a job that is not a target forward (``Job.run``)
    last: bool  # this pass completes the job (a prefill's intermediate chunks are not last)
    fed: int
    prefill: bool


class BatchScheduler:
    """The queue of jobs and the thread that runs them as batched passes of one target model."""

    def __init__(
        self,
        runtime: TargetRuntime,
        limits: AdmissionLimits = AdmissionLimits(),
        autostart: bool = True,
        metrics: VerifierMetrics | None = None,
    ) -> None:
        """``autostart=False``: no compute thread; the caller runs passes with ``run_pass`` (tests
        that need each pass to see exactly the jobs they queued)."""
        self.runtime = runtime
        self.limits = limits
        self.stats = SchedulerStats()
        # Told of each pass and each job's wait where ``stats`` already records them.
        self.metrics = metrics if metrics is not None else NoMetrics()
        self._queue: list[_QueuedJob] = []  # oldest first
        self._orders = itertools.count()
        self._passes_started = 0
        self._prefill_turn = False
        self._wake = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        if autostart:
            self._thread = threading.Thread(target=self._loop, daemon=True, name="verify")
            self._thread.start()

    @property
    def running(self) -> bool:
        """Whether queued jobs will run: not closed, and the compute thread (if it has one) alive."""
        return not self._closed and (self._thread is None or self._thread.is_alive())

    @property
    def queued(self) -> int:
        return len(self._queue)

    def enqueue(self, job: Job[T]) -> asyncio.Future[JobResult[T]]:
        """Queue ``job`` (call on a running event loop); its future resolves after its last pass.
        Cancelling the future drops the job if it has not finished (a vanished session)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        with self._wake:
            if self._closed:
                raise Refused("BUSY", "the server is shutting down")
            if len(self._queue) >= self.limits.max_queued:
                raise Refused("BUSY", f"the server is busy ({len(self._queue)} rounds queued); retry later")
            queued = _QueuedJob(job, future, loop, next(self._orders), time.perf_counter(), self._passes_started)
            self._queue.append(queued)
            self._wake.notify()
        future.add_done_callback(lambda done: setattr(queued, "cancelled", True) if done.cancelled() else None)
        return future

    async def submit(self, job: Job[T]) -> JobResult[T]:
        # Awaiting the future directly: a cancelled caller cancels it, which drops the job.
        return await self.enqueue(job)

    def close(self) -> None:
        """Stop the thread after the pass in flight; every job still queued is cancelled, so no
        session waits on a pass that will never run."""
        if self.stats.forwards:
            logger.info("scheduler: %s", json.dumps(self.stats.summary()))
        with self._wake:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._wake.notify()
        for queued in pending:
            _post(queued, _cancel)

    def run_pass(self) -> int:
        """Plan and run one pass over what is queued now (without a compute thread); rows run."""
        if self._thread is not None:
            raise RuntimeError("this scheduler runs its own compute thread")
        rows = self._next_pass(block=False)
        if rows:
            self._run(rows)
        return len(rows or [])

    def _next_pass(self, block: bool = True) -> list[_Row] | None:
        """Wait for work (unless ``block`` is False), take the next pass's rows off the queue; None
        once closed."""
        with self._wake:
            while True:
                self._queue = [queued for queued in self._queue if not queued.cancelled]
                if self._queue or self._closed or not block:
                    break
                self._wake.wait()
            if self._closed:
                return None
            if self._queue[0].job.run is not None:  # the oldest is not a target forward: it runs alone
                rows = [_Row(self._queue[0], None, True, 0, False)]
            else:
                rows = self._plan_forward()
            riding = {id(row.queued) for row in rows}
            self._queue = [queued for queued in self._queue if id(queued) not in riding]
            started = time.perf_counter()
            for row in rows:
                queued = row.queued
                if queued.first_started is None:
                    queued.first_started = started
                    queued.waited_passes = self._passes_started - queued.submitted_pass
            self._passes_started += 1
            return rows

    def _plan_forward(self) -> list[_Row]:
        """The rows of the next target forward, as the planner picks them from the queued forwards
        (called with the queue locked)."""
        forwards = [queued for queued in self._queue if queued.job.run is None]
        limits = self.limits
        candidates = [Candidate(q.job.prefill, unfed_tokens(q.job.request)) for q in forwards]  # type: ignore[arg-type]
        plan = plan_pass(candidates, limits.max_batch, limits.max_batch_rows, limits.prefill_chunk, self._prefill_turn)
        # Turns alternate: after a prefill's turn the rounds go first again.
        self._prefill_turn = not self._prefill_turn and prefill_turn_due(candidates, plan, limits.prefill_chunk)
        rows: list[_Row] = []
        for planned in plan:
            queued = forwards[planned.index]
            if queued.job.prefill:
                request, last = prefill_chunk_request(queued.job.request, planned.tokens)  # type: ignore[arg-type]
            else:
                request, last = queued.job.request, True
            rows.append(_Row(queued, request, last, planned.tokens, queued.job.prefill))
        return rows

    def _requeue(self, queued: _QueuedJob) -> None:
        """A prefill with chunks still to feed goes back to its place by age."""
        with self._wake:
            if queued.cancelled or self._closed:
                if self._closed:
                    _post(queued, _cancel)
                return
            orders = [waiting.order for waiting in self._queue]
            self._queue.insert(bisect.bisect(orders, queued.order), queued)

    def _loop(self) -> None:
        """The compute thread: one pass after another until closed."""
        while True:
            rows = self._next_pass()
            if rows is None:
                return
            self._run(rows)
            # Drop the pass before blocking for the next one: its jobs reference the sessions'
            # caches, which must be freed the moment their sessions end.
            del rows

    def _run(self, rows: list[_Row]) -> None:
        """Run one planned pass (a batched forward, or a standalone job alone), record its cost,
        and finish its jobs on this thread before the next pass starts."""
        started = time.perf_counter()
        if rows[0].queued.job.run is not None:  # planned alone
            self._run_standalone(rows[0].queued, started)
            return
        cpu_started = time.thread_time()
        try:
            all_logits = self.runtime.score_batch([row.request for row in rows])
        except Exception as error:  # noqa: BLE001 - every waiting session hears of it
            logger.exception("a batched forward of %d sessions failed", len(rows))
            for row in rows:
                _post(row.queued, _fail, error)
            return
        forward_ms = (time.perf_counter() - started) * 1000
        thread_cpu_ms = (time.thread_time() - cpu_started) * 1000
        longest = max(row.fed for row in rows)
        pass_stats = PassStats(
            rows=len(rows),
            padded_tokens=len(rows) * longest,
            fed_tokens=sum(row.fed for row in rows),
            prefill_rows=sum(row.prefill for row in rows),
            prefill_tokens=sum(row.fed for row in rows if row.prefill),
            forward_ms=forward_ms,
            thread_cpu_ms=thread_cpu_ms,
        )
        self.stats.record(pass_stats)
        self.metrics.pass_ran(pass_stats)
        deciding = time.perf_counter()
        for row, logits in zip(rows, all_logits):
            self._finish_row(row, logits, forward_ms, len(rows))
        self.stats.finish_ms += (time.perf_counter() - deciding) * 1000
        logger.debug(
            "pass: %d rows (%d prefill chunks, %d prompt tokens), %d padded tokens (%d fed) in %.1f ms",
            pass_stats.rows,
            pass_stats.prefill_rows,
            pass_stats.prefill_tokens,
            pass_stats.padded_tokens,
            pass_stats.fed_tokens,
            forward_ms,
        )

    def _finish_row(self, row: _Row, logits: torch.Tensor, forward_ms: float, batch_size: int) -> None:
        """After the pass: requeue a prefill with chunks to go, or run the job's ``finish`` and hand
        its result to the session."""
        queued = row.queued
        queued.forward_ms += forward_ms
        queued.passes += 1
        if not row.last:
            self._requeue(queued)
            return
        self.stats.jobs += 1
        if not row.prefill:
            self.stats.waited_passes[queued.waited_passes] += 1
        try:
            value = queued.job.finish(logits)
        except Exception as error:  # noqa: BLE001 - only this session fails
            _post(queued, _fail, error)
            return
        assert queued.first_started is not None
        queued_ms = (queued.first_started - queued.submitted) * 1000
        self.metrics.job_waited(queued_ms / 1000)
        result = JobResult(value, queued.forward_ms, queued_ms, batch_size, queued.passes, queued.waited_passes)
        _post(queued, _resolve, result)

    def _run_standalone(self, queued: _QueuedJob, started: float) -> None:
        assert queued.job.run is not None
        try:
            value = queued.job.run()
        except Exception as error:  # noqa: BLE001 - only this session fails
            _post(queued, _fail, error)
            return
        run_ms = (time.perf_counter() - started) * 1000
        queued_ms = (started - queued.submitted) * 1000
        self.metrics.job_waited(queued_ms / 1000)
        _post(queued, _resolve, JobResult(value, run_ms, queued_ms, 1, 1, queued.waited_passes))


def _post(queued: _QueuedJob, action: Callable[..., None], *args: object) -> None:
    try:
        queued.loop.call_soon_threadsafe(action, queued.future, *args)
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
