from edgespec.bench.metrics import PriceModel, differences_from_cloud_ar, first_differences, summarize


def record(
    mode: str, tokens: int, rounds: int, total_s: float, verify_s: float, wait_s: float, prompt: str = "p1", out=None
) -> dict:
    stats = dict(
        new_tokens=tokens,
        rounds=rounds,
        total_s=total_s,
        draft_s=0.1,
        server_verify_s=verify_s,
        bytes_sent=1000,
        bytes_received=1000,
        hits=rounds // 2,
        misses=0,
        no_hint=0,
        target_passes=rounds,
        pipelined=0,
        dropped=0,
        wait_s=wait_s,
        ttft_s=0.2,
    )
    return {"mode": mode, "profile": "wan", "prompt_id": prompt, "stats": stats, "tokens": out or [1, 2, 3]}


def test_ratios_are_taken_over_sums_not_averaged() -> None:
    summary = summarize([record("sd", 10, 5, 2.0, 1.0, 1.5), record("sd", 30, 5, 2.0, 1.0, 1.5)], "wan", PriceModel())
    assert summary["tokens_per_s"] == 40 / 4.0
    assert summary["tokens_per_round"] == 4.0
    assert summary["target_passes_per_token"] == 10 / 40
    assert summary["bytes_per_token"] == 4000 / 40
    # wait 3.0 s - verify 2.0 s - 10 rounds x 50 ms RTT = 0.5 s over 10 rounds
    assert abs(summary["overhead_ms_per_round"] - 50.0) < 1e-9
    assert summary["physical_limit_tokens_per_s"] == 40 / 2.0


def test_price_counts_gpu_seconds_and_egress() -> None:
    price = PriceModel(gpu_usd_per_hour=3600.0, egress_usd_per_gb=1e9)
    assert price.usd(server_busy_s=2.0, wire_bytes=3) == 2.0 + 3.0


def test_self_consistency_names_each_mode_s_first_difference_from_cloud_ar_per_prompt() -> None:
    records = [
        record("cloud-ar", 3, 3, 1, 1, 1, out=[1, 2, 3]),
        record("sd", 3, 1, 1, 1, 1, out=[1, 2, 3]),
        record("sd-ee", 3, 1, 1, 1, 1, out=[1, 2, 4]),
        record("sd-ee", 3, 1, 1, 1, 1, prompt="p2", out=[7]),  # no cloud-ar run of p2: not compared
        record("sd-ee-predraft", 2, 1, 1, 1, 1, out=[1, 2]),  # ended early: differs where it ended
        record("edge-only", 3, 3, 1, 0, 0, out=[9, 9, 9]),
    ]
    assert differences_from_cloud_ar(records) == {
        ("wan", "sd"): [],
        ("wan", "sd-ee"): [("p1", 2)],
        ("wan", "sd-ee-predraft"): [("p1", 2)],
    }


def test_oracle_differences_cover_every_mode_including_cloud_ar() -> None:
    oracle = {"p1": [1, 2, 3]}
    records = [record("cloud-ar", 3, 3, 1, 1, 1, out=[1, 5, 3]), record("sd", 3, 1, 1, 1, 1, out=[1, 2, 3])]
    assert first_differences(records, lambda r: oracle.get(r["prompt_id"])) == {
        ("wan", "cloud-ar"): [("p1", 1)],
        ("wan", "sd"): [],
    }


def test_aggregate_rate_is_all_clients_tokens_over_the_shared_wall_time() -> None:
    from edgespec.bench.summary import aggregate_tokens_per_s

    records = [
        {"tokens": [1] * 10, "started_at": 100.0, "ended_at": 102.0},
        {"tokens": [1] * 30, "started_at": 101.0, "ended_at": 104.0},
        {
            "error": "lost",
            "started_at": 90.0,
            "ended_at": 200.0,
        },  # failed runs produce nothing and do not stretch the window
    ]
    assert aggregate_tokens_per_s(records) == 40 / 4.0
    assert aggregate_tokens_per_s([]) == 0.0
