"""`edgespec bench --clients 1,2,4`: the summary keeps the single-count shape and adds the sweep
beside it; where clients run; the options' checks. Synthetic records (no models)."""

from __future__ import annotations

from typing import Any

import pytest

from edgespec.bench.metrics import PriceModel, summarize
from edgespec.bench.report import render_markdown, render_sweep
from edgespec.bench.runner import BenchConfig, client_core, core_layout
from edgespec.bench.summary import summarize_all, summarize_sweep
from edgespec.cli.bench import parse_client_counts


def record(
    mode: str, prompt: str, client: int, tokens: int, start: float, total: float, count: int | None = None
) -> dict[str, Any]:
    stats = dict(
        new_tokens=tokens,
        rounds=tokens if mode == "cloud-ar" else tokens // 3 + 1,
        total_s=total,
        draft_s=0.0,
        server_verify_s=total / 3,
        bytes_sent=100,
        bytes_received=100,
        hits=0,
        misses=0,
        no_hint=0,
        target_passes=tokens if mode == "cloud-ar" else tokens // 3 + 1,
        pipelined=0,
        dropped=0,
        wait_s=total / 2,
        ttft_s=total / 4,
        server_queued_s=0.01,
        timeline=[{"actor": "cloud", "what": "decode", "start_s": 0.1, "end_s": 0.2, "round": 0}],
    )
    r = {
        "mode": mode,
        "profile": "wan",
        "prompt_id": prompt,
        "client_index": client,
        "tokens": list(range(tokens)),
        "stats": stats,
        "started_at": start,
        "ended_at": start + total,
    }
    return r if count is None else dict(r, sweep_clients=count)


def sweep_records() -> list[dict[str, Any]]:
    records = []
    # Each generation's time grows with the clients sharing the server: cloud-ar's faster than sd's.
    slowdowns = {"cloud-ar": {1: 1.0, 2: 2.5, 4: 4.0}, "sd": {1: 1.0, 2: 1.3, 4: 1.7}}
    for count in (1, 2, 4):
        for mode, seconds in (("cloud-ar", 4.0), ("sd", 3.0)):
            slowdown = slowdowns[mode][count]
            for index, prompt in enumerate(("a", "b", "c", "d")):
                client = index % count
                records.append(
                    record(
                        mode,
                        prompt,
                        client,
                        16,
                        start=100.0 * count + (index // count) * seconds * slowdown,
                        total=seconds * slowdown,
                        count=count,
                    )
                )
    return records


def test_a_single_count_keeps_today_s_summary_shape() -> None:
    config = BenchConfig(modes=("cloud-ar", "sd"), profiles=("wan",), clients=4, num_prompts=2)
    records = [dict(r, sweep_clients=None) for r in sweep_records() if r["sweep_clients"] == 4]
    summary = summarize_all(config, records)
    assert "sweep" not in summary and "capacity" not in summary
    assert set(summary) >= {"config", "server_dtype", "profiles"}
    sd = summary["profiles"]["wan"]["sd"]
    assert sd["aggregate_tokens_per_s"] > 0 and sd["speedup_vs_cloud_ar"] == pytest.approx(
        16 / 5.1
    )  # cloud-ar 16 s a generation at 4 clients, sd 5.1 s
    assert {"decode_tokens_per_s", "per_client_tokens_per_s_p10", "ttft_ms_p90", "server_busy_share"} <= set(sd)


def test_a_sweep_adds_every_point_in_that_shape_and_the_capacity_table() -> None:
    config = BenchConfig(modes=("cloud-ar", "sd"), profiles=("wan",), clients=4, client_counts=(1, 2, 4), num_prompts=2)
    summary = summarize_sweep(config, sweep_records())
    assert set(summary["sweep"]) == {"1", "2", "4"}
    assert (
        summary["profiles"] == summary["sweep"]["4"]["profiles"]
    )  # the top level is the largest point, as --clients 4 alone
    assert "tokens_per_s" in summary["sweep"]["1"]["profiles"]["wan"]["cloud-ar"]
    table = summary["capacity"]["wan"]
    # Single-client cloud-ar: 16 tokens / 4 s = 4 tok/s, so the SLO is 2. cloud-ar per client at 2: 16/10 = 1.6;
    # sd per client: 16/3, 16/3.9, 16/5.1 = 3.1 at 4.
    assert table["slo_tokens_per_s"] == pytest.approx(2.0)
    assert table["modes"]["cloud-ar"]["capacity"] == 1
    assert table["modes"]["sd"]["capacity"] == 4 and table["modes"]["sd"]["vs_cloud-ar"] == 4.0
    assert table["points"]["4"]["sd"]["per_client_tokens_per_s_p10"] == pytest.approx(16 / 5.1)
    text = render_sweep(dict(summary, host={"cpu": "test"}))
    assert "## Capacity: wan" in text and "| sd | 4 | 4.00x |" in text
    assert render_markdown(summary, "edgespec bench --clients 1,2,4")


def test_a_sweep_without_n1_cloud_ar_needs_an_explicit_slo() -> None:
    with pytest.raises(ValueError, match="--slo-tokens-per-s"):
        BenchConfig(modes=("cloud-ar", "sd"), clients=4, client_counts=(2, 4))
    config = BenchConfig(modes=("cloud-ar", "sd"), clients=4, client_counts=(2, 4), slo_tokens_per_s=3.0)
    summary = summarize_sweep(config, [r for r in sweep_records() if r["sweep_clients"] != 1])
    assert summary["capacity"]["wan"]["slo_source"] == "--slo-tokens-per-s"
    assert summary["capacity"]["wan"]["modes"]["sd"]["capacity"] == 4  # 16/3.9 at 2, 16/5.1 at 4: both >= 3
    assert summary["capacity"]["wan"]["modes"]["cloud-ar"]["capacity"] == 0  # 1.6 at 2: even the smallest point misses
    with pytest.raises(ValueError, match="must be > 0"):
        BenchConfig(slo_tokens_per_s=0.0)


def test_client_counts_are_parsed_and_checked() -> None:
    assert parse_client_counts("8") == (8,)
    assert parse_client_counts("4,1,2") == (1, 2, 4)
    for bad in ("0", "1,1", "two", ""):
        with pytest.raises(SystemExit):
            parse_client_counts(bad)


def test_clients_get_cores_of_their_own_where_there_are_enough_and_share_otherwise() -> None:
    assert [client_core(i, cores=16) for i in range(4)] == [1, 2, 3, 4]
    assert [client_core(i, cores=2) for i in range(3)] == [1, 1, 1]
    assert client_core(0, cores=1) is None
    assert core_layout(4, cores=2) == {
        "server_core": 0,
        "edge_cores": [1],
        "clients_per_edge_core": 4,
        "clients_share_cores": True,
    }
    assert core_layout(4, cores=8)["clients_share_cores"] is False


def test_overhead_leaves_out_the_server_reported_queueing() -> None:
    stats = dict(
        new_tokens=10,
        rounds=4,
        total_s=3.0,
        draft_s=0.1,
        server_verify_s=1.0,
        bytes_sent=0,
        bytes_received=0,
        hits=0,
        misses=0,
        no_hint=0,
        target_passes=4,
        pipelined=0,
        dropped=0,
        wait_s=2.0,
        ttft_s=0.2,
        server_queued_s=0.6,
    )
    summary = summarize([{"mode": "sd", "stats": stats}], "wan", PriceModel())
    assert summary["queued_ms_per_round"] == pytest.approx(150.0)
    # 2.0 s waited - 1.0 s in its passes - 0.6 s queued - 4 round trips of 50 ms = 0.2 s over 4 rounds
    assert summary["overhead_ms_per_round"] == pytest.approx(50.0)


def test_the_report_names_the_host_and_what_it_ran() -> None:
    from edgespec.hostinfo import host_facts

    host = host_facts(threads_per_process=1, dtype="bfloat16", draft_dtype="GGUF (llama.cpp)")
    assert {
        "cpu",
        "avx512_bf16",
        "amx_bf16",
        "torch_cpu_capability",
        "threads_per_process",
        "dtype",
        "draft_dtype",
    } <= set(host)
    config = BenchConfig(modes=("cloud-ar", "sd"), profiles=("wan",), clients=4, num_prompts=2)
    text = render_markdown(dict(summarize_all(config, []), host=host), "edgespec bench")
    assert (
        f"Host: {host['cpu']}" in text
        and "torch CPU capability" in text
        and "Target dtype as run: bfloat16, draft: GGUF (llama.cpp)" in text
    )
    assert "γ = 4, draft stop 0.4," in text  # the drafting rule the run used
    full = render_markdown(
        summarize_all(BenchConfig(modes=("cloud-ar", "sd"), profiles=("wan",), draft_stop=0.0, runner_up=True), []),
        "edgespec bench",
    )
    assert "full blocks (draft stop 0), runner-up branches" in full


def test_cloud_ar_queueing_is_the_gaps_between_its_passes() -> None:
    from edgespec.bench.metrics import queued_s

    timeline = [
        {"actor": "cloud", "what": "prefill (server)", "start_s": 0.0, "end_s": 1.0, "round": 0},
        {"actor": "cloud", "what": "decode", "start_s": 1.0, "end_s": 1.5, "round": 1},  # submitted at once: no wait
        {"actor": "link", "what": "x", "start_s": 1.5, "end_s": 9.0, "round": 1},  # not a pass
        {"actor": "cloud", "what": "decode", "start_s": 1.8, "end_s": 2.3, "round": 2},  # missed a pass: 0.3 s
        {"actor": "cloud", "what": "decode", "start_s": 2.4, "end_s": 2.9, "round": 3},  # 0.1 s
    ]
    assert queued_s({"mode": "cloud-ar", "stats": {"timeline": timeline}}) == pytest.approx(0.4)
    rounds = [e for e in timeline if e["what"] != "decode"] + [
        {"actor": "cloud", "what": "verify (server)", "start_s": 3.0, "end_s": 3.5, "round": 1}
    ]
    assert queued_s({"mode": "sd", "stats": {"timeline": rounds, "server_queued_s": 0.25}}) == 0.25
    assert queued_s({"mode": "cloud-ar", "stats": {}}) == 0.0
