"""Pass statistics: what each batched pass cost (``PassStats``) and the pass thread's running
totals (``SchedulerStats``), which benchmarks read to count target passes and busy time."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PassStats:
    """What one batched pass cost: its rows, the tokens it paid for and fed, its time."""

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
    """The pass thread's running totals since it started, and its most recent passes."""

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
