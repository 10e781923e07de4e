"""The window: profiles assembled from an engine's measured passes and an edge device, the search
for the smallest winning decode time (checked against a case solved by hand), and the map drawn
with its markers by `simulate --window`."""

from __future__ import annotations

import json

import pytest

from edgespec.drivers.cost_profile import HardwareProfile
from edgespec.drivers.trace import Trace, write_traces
from edgespec.drivers.virtual_devices import Link
from edgespec.engines.timing import TimingConfig, time_engine
from edgespec.engines.transformers_engine import TransformersEngine
from edgespec.sim.engine_profile import EdgeCosts, is_engine_costs, profile_from_engine_costs
from edgespec.sim.simulate import SimConfig
from edgespec.sim.window import DecodeSearch, smallest_winning_decode, thresholds, tokens_per_s
from edgespec.sim.window_plot import Marker, Panel, plot_window
from tests.support.tiny_models import tiny_model

EDGE = EdgeCosts("test edge", draft_ms_per_token=7.0, draft_prefill_ms_per_token=0.3, message_overhead_ms=0.4)
NEW_TOKENS = 61


def always_accepted_trace(name: str = "a") -> Trace:
    """A text the draft predicts entirely, sure of every token: every block is accepted whole."""
    continuation = [100 + i for i in range(NEW_TOKENS + 3)]
    drafted = continuation + [7]
    return Trace(
        name,
        "synthetic",
        [1, 2, 3, 4],
        continuation,
        False,
        drafted,
        [[t, 9] for t in drafted],
        [[1.0, 0.0]] * len(drafted),
    )


def flat_profile(draft_ms: float) -> HardwareProfile:
    """A verify of 5 rows costs a decode; nothing else costs anything but the draft."""
    return HardwareProfile(
        name="flat",
        forward_ms={1: 20.0, 5: 20.0},
        prefill_ms_per_token=0.0,
        draft_ms_per_token=draft_ms,
        draft_prefill_ms_per_token=0.0,
        message_overhead_ms=0.0,
    )


@pytest.fixture(scope="module")
def engine_costs() -> dict:
    engine = TransformersEngine(tiny_model("qwen2", seed=0))
    return {
        "target": "tiny",
        "threads": 1,
        **time_engine(engine, TimingConfig(context=8, block=5, sessions=(1, 2), repeats=2)),
    }


def test_a_profile_from_engine_output_takes_the_passes_it_measured_and_the_edge_it_is_given(engine_costs) -> None:
    assert is_engine_costs(engine_costs)
    fastest = engine_costs["fastest_ms"]
    profile = profile_from_engine_costs(engine_costs, EDGE)
    assert profile.forward_ms == {1: fastest["decode"], 5: fastest["verify"]}
    assert profile.batch_factor == {1: 1.0, 2: pytest.approx(fastest["verify_x2"] / fastest["verify_x1"])}
    assert profile.decode_batch_factor == {1: 1.0, 2: pytest.approx(fastest["decode_x2"] / fastest["decode_x1"])}
    assert profile.prefill_ms_per_token == pytest.approx(engine_costs["prefill"]["ms"] / 8)
    assert (profile.draft_ms_per_token, profile.draft_prefill_ms_per_token, profile.message_overhead_ms) == (
        7.0,
        0.3,
        0.4,
    )
    assert "transformers" in profile.source and "test edge" in profile.name


def test_the_search_finds_a_crossing_bracketed_by_doubling_and_says_when_there_is_none() -> None:
    found = smallest_winning_decode(lambda x: x / 37.0, DecodeSearch(low_ms=2, high_ms=2048, precision=0.01))
    assert found["kind"] == "crossing" and 37.0 <= found["decode_ms"] <= 37.0 * 1.011
    assert smallest_winning_decode(lambda x: 3.0)["kind"] == "always"
    assert smallest_winning_decode(lambda x: 0.5) == {"decode_ms": None, "kind": "never", "searched_ms": [2.0, 2048.0]}


def test_the_smallest_winning_decode_time_matches_the_rounds_counted_by_hand() -> None:
    # 61 tokens: cloud-ar runs 61 decodes (61 x); sd runs 12 rounds of 4 drafts + 1 verify, each
    # committing 5, and a last round drafting 1 token: 13 x + 49 d. Equal at x = 49 d / 48.
    draft_ms = 10.0
    found = thresholds(
        [always_accepted_trace()],
        flat_profile(draft_ms),
        ["cloud-ar", "sd"],
        ["lan"],
        SimConfig(max_new_tokens=NEW_TOKENS, gamma=4),
        DecodeSearch(precision=0.01),
    )
    # lan adds 2 ms a round trip (and the bandwidth's time per message) to sd's 13 rounds and
    # to cloud-ar's one request: the crossing moves up by about 12 round trips over 48.
    expected = (49 * draft_ms + 12 * 2.0) / 48
    assert found["lan"]["sd"]["kind"] == "crossing"
    assert expected <= found["lan"]["sd"]["decode_ms"] <= expected * 1.03
    at_zero_rtt = tokens_per_s(
        [always_accepted_trace()],
        "sd",
        flat_profile(draft_ms).scaled(49 * draft_ms / 48),
        Link(),
        SimConfig(max_new_tokens=NEW_TOKENS),
    )
    baseline = tokens_per_s(
        [always_accepted_trace()],
        "cloud-ar",
        flat_profile(draft_ms).scaled(49 * draft_ms / 48),
        Link(),
        SimConfig(max_new_tokens=NEW_TOKENS),
    )
    assert at_zero_rtt == pytest.approx(baseline, rel=1e-9)  # exactly even where the count says


def test_the_map_is_written_with_every_marker_in_its_legend(tmp_path) -> None:
    panel = Panel(
        "verifier: test\nedge: test",
        [5, 10, 20],
        [0, 50],
        [[0.5, 0.4], [1.1, 0.9], [2.0, 1.5]],
        [Marker("engine A", 10, 50, 0.8), Marker("seed", 20, 50, 1.4)],
    )
    drawn = plot_window([panel, panel], "title", "the fastest cloud-ar", tmp_path / "window.png")
    assert (tmp_path / "window.png").read_bytes()[:4] == b"\x89PNG"
    assert drawn == [["engine A: 0.80×", "seed: 1.40×", "1.0: the window's edge"]] * 2


def test_simulate_window_writes_the_map_the_thresholds_and_the_capacity_crossing(
    tmp_path, engine_costs, capsys
) -> None:
    from edgespec.cli import main

    write_traces(
        tmp_path / "traces",
        [always_accepted_trace("a"), always_accepted_trace("b")],
        {"target": "tiny", "draft": "tiny", "dtype": "float32", "exits": "none"},
    )
    (tmp_path / "fast.json").write_text(json.dumps(engine_costs))
    slow = json.loads(json.dumps(engine_costs))
    slow["fastest_ms"] = {k: 3 * v for k, v in slow["fastest_ms"].items()}
    (tmp_path / "slow.json").write_text(json.dumps(slow))
    EDGE.save(tmp_path / "edge.json")
    args = ["simulate", "--window", "--traces", str(tmp_path / "traces"), "--hardware", str(tmp_path / "fast.json")]
    args += ["--also-engines", str(tmp_path / "slow.json"), "--edge", f"{tmp_path / 'edge.json'},jetson-orin"]
    args += ["--profiles", "wan", "--max-new-tokens", str(NEW_TOKENS), "--clients", "1,2", "--out", str(tmp_path / "w")]
    assert main(args) == 0
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert [(p["verifier_shape"], p["edge"]) for p in summary["panels"]] == [
        ("cpu", str(tmp_path / "edge.json")),
        ("cpu", "jetson-orin"),
        ("gpu", str(tmp_path / "edge.json")),
        ("gpu", "jetson-orin"),
    ]
    cpu = summary["panels"][0]
    fast, slow_marker = cpu["markers"]
    assert fast["decode_ms"] == slow_marker["decode_ms"] == engine_costs["fastest_ms"]["decode"]  # both at the fastest
    assert slow_marker["best"] < fast["best"]  # a slower verifier against the same cloud-ar
    assert set(cpu["thresholds"]["wan"]) == {"sd", "sd-ee-predraft", "sd-ee-pipelined"}
    assert any("seed: Jetson + A100 + 7B (assumed)" in label for label in summary["legends"][3])
    assert set(summary["capacity"]["points"]) == {"1", "2"}
    assert (tmp_path / "w" / "window.png").read_bytes()[:4] == b"\x89PNG"
    assert "Smallest target decode time at which each mode beats the fastest cloud-ar: wan" in capsys.readouterr().out


def test_a_plain_simulate_run_takes_the_verifier_from_engine_output_and_the_draft_from_the_edge(
    tmp_path, engine_costs
) -> None:
    from edgespec.cli import main

    write_traces(
        tmp_path / "traces",
        [always_accepted_trace("a")],
        {"target": "tiny", "draft": "tiny", "dtype": "float32", "exits": "none"},
    )
    (tmp_path / "engine.json").write_text(json.dumps(engine_costs))
    EDGE.save(tmp_path / "edge.json")
    args = ["simulate", "--traces", str(tmp_path / "traces"), "--hardware", str(tmp_path / "engine.json")]
    args += ["--edge", str(tmp_path / "edge.json"), "--modes", "cloud-ar,sd", "--profiles", "lan", "--no-plots"]
    assert main([*args, "--max-new-tokens", str(NEW_TOKENS), "--out", str(tmp_path / "sim")]) == 0
    hardware = json.loads((tmp_path / "sim" / "summary.json").read_text())["config"]["hardware"]
    assert hardware["forward_ms"] == {
        "1": engine_costs["fastest_ms"]["decode"],
        "5": engine_costs["fastest_ms"]["verify"],
    }
    assert hardware["draft_ms_per_token"] == EDGE.draft_ms_per_token
