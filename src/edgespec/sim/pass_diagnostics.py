"""Where a serving verifier's pass time goes: the same batched passes timed alone and inside the
server, under torch's profiler, and Python's garbage collections meanwhile. A capacity run on an
accelerator records these beside its throughput, so a slow pass can be told apart as the
model's, the server's state, or the load beside it."""

from __future__ import annotations

import gc
import statistics
import threading
import time
from typing import Any, Callable, Iterable

import torch

from edgespec.models.target import ScoreRequest, TargetRuntime


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class GarbageCollections:
    """Python's garbage collections in this process from construction to ``stop``, by generation
    and by thread: a collection runs in whichever thread allocates when a threshold is crossed,
    and walks every tracked object of the process (the sessions' and gRPC's too), so one in the
    compute thread's forward is time the pass pays."""

    def __init__(self) -> None:
        self._started: dict[int, float] = {}
        self.records: list[tuple[str, int, float]] = []  # thread name, generation, ms
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        ident = threading.get_ident()
        if phase == "start":
            self._started[ident] = time.perf_counter()
        elif ident in self._started:
            ms = (time.perf_counter() - self._started.pop(ident)) * 1000
            self.records.append((threading.current_thread().name, info["generation"], ms))

    def stop(self) -> None:
        gc.callbacks.remove(self._callback)

    def summary(self) -> dict[str, dict[str, list[float]]]:
        """{thread: {generation: [collections, total ms, longest ms]}}."""
        grouped: dict[str, dict[str, list[float]]] = {}
        for thread, generation, ms in self.records:
            entry = grouped.setdefault(thread, {}).setdefault(str(generation), [0, 0.0, 0.0])
            entry[0] += 1
            entry[1] = round(entry[1] + ms, 2)
            entry[2] = round(max(entry[2], ms), 2)
        return grouped


def ragged_requests(runtime: TargetRuntime, size: int, rows: int) -> list[ScoreRequest]:
    """``size`` sessions with ragged contexts of 120-220 tokens, each asking to score ``rows`` rows."""
    requests = []
    for index in range(size):
        kv = runtime.new_cache()
        sequence = [(7 * index + j) % 2000 + 1 for j in range(120 + (index * 37) % 100)]
        runtime.score_tail(sequence, 1, kv=kv)
        requests.append(ScoreRequest(sequence + [5] * rows, rows, kv, argmax_only=True))
    return requests


def isolated_pass_ms(
    runtime: TargetRuntime, device: str, sizes: Iterable[int] = (1, 8, 16, 32), repeats: int = 7
) -> dict[str, list[float]]:
    """{"sessions x rows": [median ms, median thread CPU ms]} of a pass alone over ragged
    contexts, timed as the server times its passes: to set beside ``in_server_pass_ms``."""
    timed: dict[str, list[float]] = {}
    for size in sizes:
        for rows in (1, 5):
            requests = ragged_requests(runtime, size, rows)
            samples, cpu = [], []
            for _ in range(repeats):
                _synchronize(device)
                started, cpu_started = time.perf_counter(), time.thread_time()
                runtime.score_batch(requests)
                samples.append((time.perf_counter() - started) * 1000)
                cpu.append((time.thread_time() - cpu_started) * 1000)
            timed[f"{size}x{rows}"] = [round(statistics.median(samples), 2), round(statistics.median(cpu), 2)]
    _synchronize(device)
    return timed


def profiled_call(device: str, run: Callable[[], Any], title: str) -> str:
    """One call of ``run`` under torch's profiler: its wall and thread CPU ms, and where the time went."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    _synchronize(device)
    started, cpu_started = time.perf_counter(), time.thread_time()
    with profile(activities=activities) as prof:
        run()
    wall, cpu = (time.perf_counter() - started) * 1000, (time.thread_time() - cpu_started) * 1000
    events = prof.key_averages()
    calls = sum(event.count for event in events)
    table = events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60)
    return f"## {title}: {wall:.1f} ms wall, {cpu:.1f} ms thread CPU (profiled), {calls} op calls\n{table}"


def profile_isolated_passes(runtime: TargetRuntime, device: str, sizes: Iterable[int] = (8, 32)) -> list[str]:
    """Passes of ``sizes`` sessions' verify blocks, alone, under the profiler."""
    tables = []
    for size in sizes:
        runtime.score_batch(ragged_requests(runtime, size, 5))  # warm this exact shape
        requests = ragged_requests(runtime, size, 5)
        tables.append(profiled_call(device, lambda: runtime.score_batch(requests), f"alone: {size} sessions x 5 rows"))
    return tables


def profile_in_server_passes(runtime: TargetRuntime, device: str, count: int, tables: list[str]) -> None:
    """Profile ``count`` of the server's passes of at least 4 sessions' rounds (no prefill chunk),
    from the 5th such pass on (the load has built up by then), on the server's own compute thread,
    appending each table to ``tables``. Wraps ``runtime.score_batch`` on the instance: delete that
    attribute to stop."""
    original = runtime.score_batch
    seen = 0

    def score_batch(requests: Any) -> Any:
        nonlocal seen
        rounds = len(requests) >= 4 and all(len(r.sequence) - len(r.kv.tokens) <= 9 for r in requests)
        if rounds:
            seen += 1
        if rounds and 5 <= seen < 5 + count:
            result: list[Any] = []
            title = f"in the server: {len(requests)} sessions, pass {seen}"
            tables.append(profiled_call(device, lambda: result.extend(original(requests)), title))
            return result
        return original(requests)

    runtime.score_batch = score_batch  # type: ignore[method-assign]


def in_server_pass_ms(passes: Iterable[Any]) -> dict[str, list[float]]:
    """The server's passes without prefill, by sessions x widest row: [median ms, median thread
    CPU ms, passes], for groups of at least three passes."""
    grouped: dict[tuple[int, int], list[Any]] = {}
    for one in passes:
        if one.prefill_rows == 0:
            grouped.setdefault((one.rows, one.padded_tokens // one.rows), []).append(one)
    return {
        f"{rows}x{width}": [
            round(statistics.median(p.forward_ms for p in group), 2),
            round(statistics.median(p.thread_cpu_ms for p in group), 2),
            len(group),
        ]
        for (rows, width), group in sorted(grouped.items())
        if len(group) >= 3
    }
