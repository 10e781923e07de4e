"""The capacity computation (shared by `edgespec bench` and `edgespec simulate` sweeps) on
synthetic results: the SLO rule, p10 per client, the decode split, the verifier's busy time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgespec.capacity import (
    capacity,
    capacity_table,
    decode_tokens_per_s,
    default_slo,
    per_client_tokens_per_s,
    percentile,
    plot_capacity,
    point_metrics,
    render_capacity_markdown,
    server_busy_s,
    union_length,
)


def generation(
    client: int,
    start: float,
    end: float,
    tokens: int,
    ttft: float,
    passes: list[tuple[float, float]] = (),
    mode: str = "sd",
) -> dict[str, Any]:
    timeline = [
        {"actor": "cloud", "what": "verify (server)", "start_s": a, "end_s": b, "round": i}
        for i, (a, b) in enumerate(passes)
    ]
    timeline.append(
        {"actor": "edge", "what": "draft", "start_s": 0.0, "end_s": end - start, "round": 0}
    )  # not the server's
    return {
        "mode": mode,
        "client_index": client,
        "started_at": start,
        "ended_at": end,
        "tokens": [7] * tokens,
        "stats": {
            "total_s": end - start,
            "ttft_s": ttft,
            "new_tokens": tokens,
            "target_passes": len(passes),
            "timeline": timeline,
        },
    }


def test_capacity_is_the_most_clients_whose_p10_stays_at_or_above_the_slo() -> None:
    assert capacity({1: 10.0, 2: 8.0, 4: 5.0, 8: 2.0}, slo=5.0) == {
        "capacity": 4,
        "also_met_at": [],
        "largest_point": 8,
    }
    assert (
        capacity({1: 10.0, 2: 8.0}, slo=5.0)["capacity"] == 2
    )  # meets at the largest point: capacity is at least that


def test_no_point_meets_the_slo_gives_zero() -> None:
    assert capacity({1: 4.9, 2: 3.0, 4: 1.0}, slo=5.0)["capacity"] == 0
    assert capacity({}, slo=5.0)["capacity"] == 0


def test_a_non_monotone_sweep_counts_only_up_to_the_first_miss() -> None:
    # Met at 1, missed at 2 (noise?), met again at 4: capacity is 1, and 4 is listed apart.
    result = capacity({4: 6.0, 1: 9.0, 2: 4.0, 8: 1.0}, slo=5.0)
    assert result["capacity"] == 1
    assert result["also_met_at"] == [4]


def test_default_slo_is_half_of_single_client_cloud_ar_and_missing_n1_is_a_clear_error() -> None:
    points = {
        1: {"cloud-ar": {"per_client_tokens_per_s_median": 3.0}, "sd": {"per_client_tokens_per_s_median": 4.0}},
        4: {"cloud-ar": {}},
    }
    assert default_slo(points) == 1.5
    with pytest.raises(ValueError, match="no N=1 cloud-ar point.*--slo-tokens-per-s"):
        default_slo({2: points[1], 4: points[1]})
    with pytest.raises(ValueError, match="no N=1 cloud-ar point"):
        default_slo({1: {"sd": points[1]["sd"]}})


def test_capacity_table_gives_ratios_to_the_baselines_and_none_where_a_baseline_serves_nobody() -> None:
    figures = lambda p10: {"per_client_tokens_per_s_p10": p10}  # noqa: E731
    points = {
        1: {"cloud-ar": figures(4.0), "cloud-sd": figures(4.5), "sd": figures(3.0)},
        2: {"cloud-ar": figures(1.5), "cloud-sd": figures(2.5), "sd": figures(2.9)},
        4: {"cloud-ar": figures(0.5), "cloud-sd": figures(1.0), "sd": figures(2.1)},
    }
    table = capacity_table(points, slo=2.0)
    assert table["slo_tokens_per_s"] == 2.0
    assert {m: r["capacity"] for m, r in table["modes"].items()} == {"cloud-ar": 1, "cloud-sd": 2, "sd": 4}
    assert table["modes"]["sd"]["vs_cloud-ar"] == 4.0 and table["modes"]["sd"]["vs_cloud-sd"] == 2.0
    assert "vs_cloud-ar" not in table["modes"]["cloud-ar"]
    assert capacity_table(points, slo=100.0)["modes"]["sd"]["vs_cloud-ar"] is None
    text = render_capacity_markdown(
        {n: {m: _full(f["per_client_tokens_per_s_p10"]) for m, f in p.items()} for n, p in points.items()},
        table,
        "test",
        "",
    )
    assert "| sd | 4 | 4.00x | 2.00x |" in text
    assert "capacity ≥ 4" in text  # met at the largest point: a lower bound


def _full(p10: float) -> dict[str, float]:
    return {
        "aggregate_tokens_per_s": 1.0,
        "decode_tokens_per_s": 1.0,
        "per_client_tokens_per_s_median": p10,
        "per_client_tokens_per_s_p10": p10,
        "ttft_ms_p50": 1.0,
        "ttft_ms_p90": 2.0,
        "target_passes_per_token": 0.3,
    }


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([5.0], 10) == 5.0
    assert percentile([2.0, 4.0], 10) == pytest.approx(2.2)
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0], 10) == pytest.approx(2.0)
    assert percentile([], 50) == 0.0


def test_per_client_rate_is_each_client_s_tokens_over_its_generating_time() -> None:
    records = [generation(0, 0.0, 2.0, 10, 0.5), generation(0, 2.0, 4.0, 30, 0.5), generation(1, 0.0, 1.0, 5, 0.5)]
    assert sorted(per_client_tokens_per_s(records)) == [
        5.0,
        10.0,
    ]  # client 0: 40 tokens / 4 s, not the mean of 5 and 15


def test_decode_rate_counts_tokens_after_each_first_token_over_the_union_of_decode_windows() -> None:
    records = [
        generation(0, 10.0, 14.0, 9, ttft=2.0),  # decodes over [12, 14]: 8 tokens after the first
        generation(1, 10.0, 15.0, 5, ttft=3.0),  # [13, 15]: 4 tokens; windows overlap, union [12, 15] = 3 s
        {"mode": "sd", "client_index": 2, "error": "lost", "started_at": 0.0, "ended_at": 100.0},  # no output: ignored
    ]
    assert decode_tokens_per_s(records) == pytest.approx(12 / 3.0)
    # One client's generations one after another: their decode windows add up (the TTFTs between are left out).
    alone = [generation(0, 0.0, 3.0, 11, ttft=1.0), generation(0, 3.0, 5.0, 3, ttft=1.0)]
    assert decode_tokens_per_s(alone) == pytest.approx((10 + 2) / (2.0 + 1.0))


def test_union_counts_overlaps_once() -> None:
    assert union_length([(0, 1), (0.5, 2), (3, 4), (3.2, 3.5), (5, 5)]) == pytest.approx(3.0)


def test_server_busy_counts_a_batched_pass_once_for_all_the_sessions_in_it() -> None:
    # Two clients ride the same two passes ([1.0, 1.5] and [2.0, 2.4] on the shared clock), each
    # seeing its end a few ms apart (delivery); a third pass only client 0 rode.
    records = [
        generation(0, 0.0, 4.0, 8, 0.5, passes=[(1.0, 1.5), (2.0, 2.4), (3.0, 3.2)]),
        generation(1, 0.5, 4.0, 8, 0.5, passes=[(0.502, 1.002), (1.503, 1.903)]),
    ]
    assert server_busy_s(records) == pytest.approx(0.502 + 0.403 + 0.2)
    assert (
        server_busy_s([dict(records[0], stats={k: v for k, v in records[0]["stats"].items() if k != "timeline"})])
        is None
    )


def test_point_metrics_on_a_synthetic_point() -> None:
    records = [
        generation(0, 0.0, 4.0, 20, 1.0, passes=[(1.0, 2.0)]),
        generation(1, 0.0, 2.0, 6, 0.5, passes=[(1.0, 2.0)]),
        generation(2, 0.0, 8.0, 24, 3.0, passes=[(1.0, 2.0), (4.0, 5.0)]),
    ]
    figures = point_metrics(records)
    assert figures["clients"] == 3
    assert figures["aggregate_tokens_per_s"] == pytest.approx(50 / 8.0)
    assert figures["per_client_tokens_per_s_median"] == pytest.approx(3.0)  # rates 5, 3, 3
    assert figures["per_client_tokens_per_s_p10"] == pytest.approx(3.0)
    assert figures["ttft_ms_p50"] == pytest.approx(1000.0)
    assert figures["ttft_ms_p90"] == pytest.approx(2600.0)
    assert figures["server_busy_share"] == pytest.approx(2.0 / 8.0)
    assert figures["server_s_per_token"] == pytest.approx(2.0 / 50)
    assert figures["target_passes_per_token"] == pytest.approx(4 / 50)
    assert point_metrics(records, busy_s=4.0)["server_busy_share"] == 0.5  # an exact busy time wins (the simulator's)
    assert point_metrics([]) == {}


def test_capacity_plot_is_written(tmp_path: Path) -> None:
    points = {n: {"cloud-ar": _full(4.0 / n), "sd": _full(5.0 / n**0.5)} for n in (1, 2, 4, 8)}
    path = tmp_path / "capacity.png"
    plot_capacity(points, 1.5, "synthetic", path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
