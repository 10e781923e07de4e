"""The pass thread's running totals (``SchedulerStats``): each pass counted once, padding as the
share of paid tokens that fed nothing."""

from __future__ import annotations

from edgespec.server.pass_stats import PassStats, SchedulerStats


def test_passes_add_up_and_the_summary_reports_them() -> None:
    stats = SchedulerStats()
    stats.record(PassStats(rows=2, padded_tokens=10, fed_tokens=6, prefill_rows=0, prefill_tokens=0, forward_ms=40.0))
    stats.record(PassStats(rows=3, padded_tokens=12, fed_tokens=12, prefill_rows=1, prefill_tokens=4, forward_ms=60.0))
    stats.jobs = 4
    stats.waited_passes[0] += 3
    stats.finish_ms = 5.0
    assert stats.largest_batch == 3 and len(stats.recent) == 2
    assert stats.summary() == {
        "forwards": 2,
        "jobs": 4,
        "rows_per_pass": {2: 1, 3: 1},
        "padded_tokens": 22,
        "fed_tokens": 18,
        "padding_share": round(1 - 18 / 22, 3),
        "prefill_chunks": 1,
        "prefill_tokens": 4,
        "busy_s": 0.1,
        "finish_s": 0.005,
        "round_waited_passes": {0: 3},
    }


def test_no_pass_yet_has_no_padding_and_no_largest_batch() -> None:
    stats = SchedulerStats()
    assert stats.largest_batch == 0 and stats.summary()["padding_share"] == 0.0
