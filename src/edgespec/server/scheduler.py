"""The server's compute loop: gathers the forward passes that sessions are waiting on and runs
them as batched forwards of the one shared target model.

Each session has at most one job in flight (it waits for its verdict before the next block), so
whatever is queued when the model frees up is at most one job per waiting session. Nothing waits
for a batch to fill (no added latency at low load); under load the batch grows by itself, because
sessions queue up while the previous forward runs.

What goes into a pass (``plan_pass``, a pure function):

1. **Rounds** (verify and decode jobs), oldest first, while the pass stays within its cost budget.
   A batch is a left-padded rectangle, and padding costs compute like real tokens, so the budget
   counts **padded token-rows**: rows x the longest row's fed tokens (``max_batch_rows``). The
   oldest round always goes; the first that does not fit stops the pass, so a younger round never
   overtakes an older one, and a round skipped once is among the oldest next time.
2. **Prefill chunks** fill what budget remains, oldest prefill first: a prompt is fed
   ``prefill_chunk`` tokens at a time, its cache growing pass by pass; the last chunk completes
   the prefill. Where a full chunk would widen the pass past its budget, the chunk rides at the
   width the pass's rounds already have (no padding added: on a compute-bound CPU a 5-token
   verify row padded to a 32-token chunk costs what 32 tokens cost). Chunks yield to rounds, but
   the oldest waiting prefill gets a chunk in every pass (one row is kept for it), and when that
   was less than a full chunk while every waiting round rode, the next pass is the prefill's
   **turn**: its full chunk first, then whatever else fits at that width, oldest first. So a
   round waits for at most the pass in flight plus one prefill turn (while the budget holds every
   waiting round), and a prompt advances a full chunk every other pass unless rounds alone fill
   the budget.

``prefill_chunk = 0`` keeps the old behaviour: a prefill runs alone, the whole prompt in one pass,
when it is the oldest job.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import itertools
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

import torch

from edgespec.models.kv import valid_prefix
from edgespec.models.target import ScoreRequest, TargetRuntime
from edgespec.server.refusals import Refused

logger = logging.getLogger(__name__)
T = TypeVar("T")


ACCELERATOR_PREFILL_CHUNK = 128


@dataclass(frozen=True)
class AdmissionLimits:
    max_sessions: int = 64  # open sessions; one more is refused with BUSY
    max_queued: int = 256  # jobs waiting for the model; one more is refused with BUSY
    max_batch: int = 32  # rows (sessions) per forward pass
    # The cost budget of one forward pass in padded token-rows: rows x the longest row's fed
    # tokens (8 verify rows of 5 tokens: 40; the same plus a 32-token chunk: 9 x 32 = 288). The
    # default holds --max-batch rows of the longest usual block (32 x 9), so only chunked prefills
    # meet it; with chunks on this 2-core CPU 128 keeps a pass near 3 s (bf16 1.5B target).
    max_batch_rows: int = 512
    # Prompt tokens a prefill feeds per pass, riding with other sessions' rounds; 0 (default): a
    # prefill runs alone, the whole prompt in one pass. On this compute-bound CPU, 8 clients
    # starting together got their first tokens no sooner with chunks (same mean, wider spread)
    # and decoded slower (more, smaller passes): see README, "Prefill in the batch". An
    # accelerator's default is `batch_budget`'s.
    prefill_chunk: int = 0

    @staticmethod
    def batch_budget(device: str, max_batch: int, prefill_chunk: int | None, max_batch_rows: int | None) -> tuple[int, int]:
        """(prefill_chunk, max_batch_rows) for a target on ``device``, each unless given. On an
        accelerator a pass costs about the same for 5 tokens a row or 128, so prefills ride with
        the rounds in chunks of 128 and the budget holds every row at that width: on an H200 with
        64 clients (random weights, real shapes) that cut sd's TTFT p50 from 2.7 s to 1.1 s and
        raised its p10 tokens/s from 4.95 to 5.88 (README, "Checked on a real H200"). On a CPU,
        chunks did not pay (the class defaults)."""
        accelerator = not device.startswith("cpu")
        chunk = prefill_chunk if prefill_chunk is not None else (ACCELERATOR_PREFILL_CHUNK if accelerator else 0)
        if max_batch_rows is None:
            max_batch_rows = max(512, max_batch * chunk) if accelerator else 512
        return chunk, max_batch_rows

    def __post_init__(self) -> None:
        for name in ("max_sessions", "max_queued", "max_batch", "max_batch_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"admission limits must be >= 1: {name} is {getattr(self, name)}")
        if self.prefill_chunk < 0:
            raise ValueError(f"prefill_chunk must be >= 0 (0: prefills run alone), got {self.prefill_chunk}")


@dataclass
class Job(Generic[T]):
    """One session's forward: what to score, and what to do with the logits (on the compute
    thread, right after the forward). A ``prefill`` job may be fed in chunks over several passes;
    its ``finish`` gets the logits of the last chunk."""

    request: ScoreRequest | None
    finish: Callable[[torch.Tensor], T]
    prefill: bool = False
    # Compute on the server's processor that is not a target forward (cloud-sd's own draft): run
    # alone on this thread instead of ``request`` (so never beside a target forward), timed as one.
    run: Callable[[], T] | None = None

    @classmethod
    def other(cls, run: Callable[[], T]) -> "Job[T]":
        return cls(None, finish=lambda logits: run(), run=run)


@dataclass(frozen=True)
class JobResult(Generic[T]):
    value: T
    forward_ms: float  # the (batched) forwards this job rode in, summed (a chunked prefill: several)
    queued_ms: float  # submitted -> its first forward started
    batch_size: int  # rows in its (last) forward
    passes: int = 1  # forwards it rode in
    waited_passes: int = 0  # forwards that started after it was submitted and before its first


@dataclass(frozen=True)
class Candidate:
    """A queued job as the planner sees it: a round, or a prefill with ``tokens`` still to feed."""

    prefill: bool
    tokens: int


@dataclass(frozen=True)
class Planned:
    index: int  # into the candidates
    tokens: int  # fed in this pass


def plan_pass(candidates: Sequence[Candidate], max_rows: int, budget: int, prefill_chunk: int, prefill_turn: bool = False) -> list[Planned]:
    """Which of ``candidates`` (oldest first) ride in the next pass, and how many tokens each
    feeds: see the module docstring. ``budget`` is in padded token-rows. ``prefill_turn``: the
    oldest prefill goes first with a full chunk (``prefill_turn_due`` said the last pass gave it less)."""
    if not candidates:
        return []
    if prefill_chunk <= 0 and candidates[0].prefill:
        return [Planned(0, candidates[0].tokens)]  # a whole prompt, alone
    waiting_prefill = prefill_chunk > 0 and any(c.prefill for c in candidates)
    if waiting_prefill and prefill_turn:
        return _prefill_first(candidates, max_rows, budget, prefill_chunk)
    # A waiting prefill keeps one row (unless one row is all there is: then rounds and chunks
    # simply take turns by age).
    round_rows = max_rows - 1 if waiting_prefill and max_rows > 1 else max_rows
    if waiting_prefill and max_rows == 1:
        oldest = candidates[0]
        return [Planned(0, min(prefill_chunk, oldest.tokens, budget) if oldest.prefill else oldest.tokens)]
    chosen: list[Planned] = []
    longest = 0
    for index, candidate in enumerate(candidates):
        if candidate.prefill:
            continue
        if len(chosen) >= round_rows:
            break
        wider = max(longest, candidate.tokens)
        if chosen and (len(chosen) + 1) * wider > budget:
            break
        chosen.append(Planned(index, candidate.tokens))
        longest = wider
    if not waiting_prefill:
        return chosen
    first = True
    for index, candidate in enumerate(candidates):
        if not candidate.prefill:
            continue
        if len(chosen) >= max_rows:
            break
        rows = len(chosen) + 1
        size = min(prefill_chunk, candidate.tokens)
        if rows * max(longest, size) > budget:
            # A full chunk would widen the pass past its budget: ride at the width the rounds
            # already pay for (padding costs compute like tokens), or, in a pass of prefills
            # alone, take what the budget allows.
            size = min(candidate.tokens, longest if longest else budget)
            if not first and rows * max(longest, size) > budget:
                break  # the oldest prefill always rides (progress); the others only within budget
        chosen.append(Planned(index, size))
        longest = max(longest, size)
        first = False
    return chosen


def _prefill_first(candidates: Sequence[Candidate], max_rows: int, budget: int, prefill_chunk: int) -> list[Planned]:
    """The oldest prefill's full chunk (within the budget), then whatever else fits at that
    width, oldest first: a round waits at most this one pass, and rides in it if it fits."""
    first = next(index for index, candidate in enumerate(candidates) if candidate.prefill)
    longest = min(prefill_chunk, candidates[first].tokens, budget)
    chosen = [Planned(first, longest)]
    for index, candidate in enumerate(candidates):
        if index == first:
            continue
        size = min(prefill_chunk, candidate.tokens) if candidate.prefill else candidate.tokens
        if len(chosen) >= max_rows or (len(chosen) + 1) * max(longest, size) > budget:
            break
        chosen.append(Planned(index, size))
        longest = max(longest, size)
    return chosen


def prefill_turn_due(candidates: Sequence[Candidate], plan: Sequence[Planned], prefill_chunk: int) -> bool:
    """Whether the next pass is a prefill's turn: every waiting round rode in ``plan`` but a
    waiting prefill got less than a full chunk (or nothing). On a compute-bound CPU a chunk can
    only ride with rounds at their width (a decode row feeds 1 token), so without turns a prompt
    would crawl while others decode; rounds put off by the budget keep priority, so none waits
    two passes for a prefill."""
    if prefill_chunk <= 0:
        return False
    fed = {planned.index: planned.tokens for planned in plan}
    if any(not c.prefill and i not in fed for i, c in enumerate(candidates)):
        return False
    return any(c.prefill and fed.get(i, 0) < min(prefill_chunk, c.tokens) for i, c in enumerate(candidates))


@dataclass(frozen=True)
class PassStats:
    rows: int
    padded_tokens: int  # rows x the longest fed row: the compute the pass paid for
    fed_tokens: int  # real tokens among them
    prefill_rows: int
    prefill_tokens: int  # prompt tokens fed by prefill chunks
    forward_ms: float
    # The compute thread's own CPU time in the forward: far below forward_ms, it waited (for the GIL,
    # for a core); near it, it dispatched (or spun on the accelerator).
    thread_cpu_ms: float = 0.0


@dataclass
class SchedulerStats:
    forwards: int = 0
    jobs: int = 0  # completed jobs (a chunked prefill counts once)
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)
    padded_tokens: int = 0
    fed_tokens: int = 0
    prefill_chunks: int = 0
    prefill_tokens: int = 0
    busy_ms: float = 0.0  # every forward pass's time, summed: the verifier's busy time
    # The compute thread's time after each pass deciding its sessions' results (verdicts, token
    # choices, cache rollbacks) before the next pass can start: busy too, outside the forwards.
    finish_ms: float = 0.0
    # Per completed round (verify/decode): passes started after it was queued and before its own.
    waited_passes: collections.Counter[int] = field(default_factory=collections.Counter)
    recent: collections.deque[PassStats] = field(default_factory=lambda: collections.deque(maxlen=4096))

    @property
    def largest_batch(self) -> int:
        return max(self.batch_sizes, default=0)

    def record(self, stats: PassStats) -> None:
        self.forwards += 1
        self.batch_sizes[stats.rows] += 1
        self.padded_tokens += stats.padded_tokens
        self.fed_tokens += stats.fed_tokens
        self.prefill_chunks += stats.prefill_rows
        self.prefill_tokens += stats.prefill_tokens
        self.busy_ms += stats.forward_ms
        self.recent.append(stats)

    def summary(self) -> dict[str, object]:
        """Totals a benchmark can read (also logged when the scheduler closes)."""
        return {
            "forwards": self.forwards,
            "jobs": self.jobs,
            "rows_per_pass": dict(sorted(self.batch_sizes.items())),
            "padded_tokens": self.padded_tokens,
            "fed_tokens": self.fed_tokens,
            "padding_share": round(1 - self.fed_tokens / self.padded_tokens, 3) if self.padded_tokens else 0.0,
            "prefill_chunks": self.prefill_chunks,
            "prefill_tokens": self.prefill_tokens,
            "busy_s": round(self.busy_ms / 1000, 3),
            "finish_s": round(self.finish_ms / 1000, 3),
            "round_waited_passes": dict(sorted(self.waited_passes.items())),
        }


@dataclass
class _Entry:
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
class _Ride:
    entry: _Entry
    request: ScoreRequest | None  # None: a job that is not a target forward (``Job.run``)
    last: bool  # this pass completes the job (a prefill's intermediate chunks are not last)
    fed: int
    prefill: bool


def unfed_tokens(request: ScoreRequest) -> int:
    """Tokens a forward of ``request`` would feed: what its cache does not hold yet (``kv.sync``'s
    arithmetic; read on the compute thread, while the job's session waits for it)."""
    return len(request.sequence) - valid_prefix(request.kv.tokens, request.sequence, request.tail)


def prefill_chunk_request(request: ScoreRequest, tokens: int) -> tuple[ScoreRequest, bool]:
    """The next ``tokens`` of a prefill; True when this chunk completes it (then it is the
    request itself, whose logits the job's ``finish`` reads)."""
    cached = valid_prefix(request.kv.tokens, request.sequence, request.tail)
    end = cached + tokens
    if end >= len(request.sequence):
        return request, True
    return ScoreRequest(request.sequence[:end], 1, request.kv), False


class BatchScheduler:
    def __init__(self, runtime: TargetRuntime, limits: AdmissionLimits = AdmissionLimits(), autostart: bool = True) -> None:
        """``autostart=False``: no compute thread; the caller runs passes with ``run_pass`` (tests
        that need each pass to see exactly the jobs they queued)."""
        self.runtime = runtime
        self.limits = limits
        self.stats = SchedulerStats()
        self._queue: list[_Entry] = []  # oldest first
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
            entry = _Entry(job, future, loop, next(self._orders), time.perf_counter(), self._passes_started)
            self._queue.append(entry)
            self._wake.notify()
        future.add_done_callback(lambda done: setattr(entry, "cancelled", True) if done.cancelled() else None)
        return future

    async def submit(self, job: Job[T]) -> JobResult[T]:
        # Awaiting the future directly: a cancelled caller cancels it, which drops the job.
        return await self.enqueue(job)

    def close(self) -> None:
        if self.stats.forwards:
            logger.info("scheduler: %s", json.dumps(self.stats.summary()))
        with self._wake:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._wake.notify()
        for entry in pending:
            _post(entry, _cancel)

    def run_pass(self) -> int:
        """Plan and run one pass over what is queued now (without a compute thread); rows run."""
        if self._thread is not None:
            raise RuntimeError("this scheduler runs its own compute thread")
        rides = self._next_pass(block=False)
        if rides:
            self._run(rides)
        return len(rides or [])

    def _next_pass(self, block: bool = True) -> list[_Ride] | None:
        with self._wake:
            while True:
                self._queue = [entry for entry in self._queue if not entry.cancelled]
                if self._queue or self._closed or not block:
                    break
                self._wake.wait()
            if self._closed:
                return None
            rides: list[_Ride] = []
            if self._queue[0].job.run is not None:  # the oldest is not a target forward: it runs alone
                rides.append(_Ride(self._queue[0], None, True, 0, False))
            else:
                forwards = [entry for entry in self._queue if entry.job.run is None]
                limits = self.limits
                candidates = [Candidate(e.job.prefill, unfed_tokens(e.job.request)) for e in forwards]  # type: ignore[arg-type]
                plan = plan_pass(candidates, limits.max_batch, limits.max_batch_rows, limits.prefill_chunk, self._prefill_turn)
                # Turns alternate: after a prefill's turn the rounds go first again.
                self._prefill_turn = not self._prefill_turn and prefill_turn_due(candidates, plan, limits.prefill_chunk)
                for planned in plan:
                    entry = forwards[planned.index]
                    if entry.job.prefill:
                        request, last = prefill_chunk_request(entry.job.request, planned.tokens)  # type: ignore[arg-type]
                    else:
                        request, last = entry.job.request, True
                    rides.append(_Ride(entry, request, last, planned.tokens, entry.job.prefill))
            riding = {id(ride.entry) for ride in rides}
            self._queue = [entry for entry in self._queue if id(entry) not in riding]
            started = time.perf_counter()
            for ride in rides:
                entry = ride.entry
                if entry.first_started is None:
                    entry.first_started = started
                    entry.waited_passes = self._passes_started - entry.submitted_pass
            self._passes_started += 1
            return rides

    def _requeue(self, entry: _Entry) -> None:
        """A prefill with chunks still to feed goes back to its place by age."""
        with self._wake:
            if entry.cancelled or self._closed:
                if self._closed:
                    _post(entry, _cancel)
                return
            orders = [queued.order for queued in self._queue]
            self._queue.insert(bisect.bisect(orders, entry.order), entry)

    def _loop(self) -> None:
        while True:
            rides = self._next_pass()
            if rides is None:
                return
            self._run(rides)
            # Drop the pass before blocking for the next one: its jobs reference the sessions'
            # caches, which must be freed the moment their sessions end.
            del rides

    def _run(self, rides: list[_Ride]) -> None:
        started = time.perf_counter()
        if rides[0].entry.job.run is not None:  # planned alone
            self._run_other(rides[0].entry, started)
            return
        cpu_started = time.thread_time()
        try:
            all_logits = self.runtime.score_batch([ride.request for ride in rides])
        except Exception as error:  # noqa: BLE001 - every waiting session hears of it
            logger.exception("a batched forward of %d sessions failed", len(rides))
            for ride in rides:
                _post(ride.entry, _fail, error)
            return
        forward_ms = (time.perf_counter() - started) * 1000
        thread_cpu_ms = (time.thread_time() - cpu_started) * 1000
        longest = max(ride.fed for ride in rides)
        pass_stats = PassStats(
            rows=len(rides),
            padded_tokens=len(rides) * longest,
            fed_tokens=sum(ride.fed for ride in rides),
            prefill_rows=sum(ride.prefill for ride in rides),
            prefill_tokens=sum(ride.fed for ride in rides if ride.prefill),
            forward_ms=forward_ms,
            thread_cpu_ms=thread_cpu_ms,
        )
        self.stats.record(pass_stats)
        deciding = time.perf_counter()
        for ride, logits in zip(rides, all_logits):
            entry = ride.entry
            entry.forward_ms += forward_ms
            entry.passes += 1
            if not ride.last:
                self._requeue(entry)
                continue
            self.stats.jobs += 1
            if not ride.prefill:
                self.stats.waited_passes[entry.waited_passes] += 1
            try:
                value = entry.job.finish(logits)
            except Exception as error:  # noqa: BLE001 - only this session fails
                _post(entry, _fail, error)
                continue
            assert entry.first_started is not None
            _post(entry, _resolve, JobResult(
                value, entry.forward_ms, (entry.first_started - entry.submitted) * 1000, len(rides), entry.passes, entry.waited_passes,
            ))
        self.stats.finish_ms += (time.perf_counter() - deciding) * 1000
        logger.debug(
            "pass: %d rows (%d prefill chunks, %d prompt tokens), %d padded tokens (%d fed) in %.1f ms",
            pass_stats.rows, pass_stats.prefill_rows, pass_stats.prefill_tokens, pass_stats.padded_tokens, pass_stats.fed_tokens, forward_ms,
        )

    def _run_other(self, entry: _Entry, started: float) -> None:
        assert entry.job.run is not None
        try:
            value = entry.job.run()
        except Exception as error:  # noqa: BLE001 - only this session fails
            _post(entry, _fail, error)
            return
        _post(entry, _resolve, JobResult(
            value, (time.perf_counter() - started) * 1000, (started - entry.submitted) * 1000, 1, 1, entry.waited_passes,
        ))


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
