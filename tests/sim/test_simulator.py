"""Traces and the simulator: a replay of a recorded greedy trace through the round core is
exact in tokens and verdicts (the same rounds, the same accepted counts as the real engine)."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.drivers.cost_profile import HardwareProfile, h200_profile
from edgespec.drivers.local_engine import LocalEngine
from edgespec.drivers.trace import Trace
from edgespec.drivers.virtual_devices import Link
from edgespec.exits.heads import ExitHeads, ExitSpec
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from edgespec.sim.simulate import SimConfig, clients_sweep, run_mode
from edgespec.sim.trace import record_trace
from tests.support.tiny_models import greedy_reference, layer_skip_copy, tiny_model

PROMPTS = [[3, 17, 42, 8, 9, 61], [5, 6, 7], [90, 1, 2, 3, 4, 5, 6, 7]]
NEW_TOKENS = 40
PROFILE = HardwareProfile(
    name="test",
    forward_ms={1: 10.0, 5: 12.0, 9: 14.0},
    prefill_ms_per_token=0.5,
    exit_ms=0.5,
    num_layers=4,
    batch_factor={1: 1.0, 8: 2.0},
    draft_ms_per_token=3.0,
    draft_prefill_ms_per_token=0.2,
)


@lru_cache(maxsize=None)
def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    return tiny_model("qwen2", seed=0), layer_skip_copy(tiny_model("qwen2", seed=0), keep=2)


def runtime() -> TargetRuntime:
    target, _ = models()
    exits = ExitHeads([ExitSpec(2, threshold=0.0), ExitSpec(3, threshold=0.3)], target.config.hidden_size)
    return TargetRuntime(target, exits)


@lru_cache(maxsize=None)
def traces() -> tuple[Trace, ...]:
    target, draft = models()
    return tuple(record_trace(runtime(), draft, p, NEW_TOKENS + 8, [], f"p{i}", "test") for i, p in enumerate(PROMPTS))


def test_a_trace_holds_the_target_continuation_and_the_draft_and_exit_choices() -> None:
    target, draft = models()
    trace = traces()[0]
    assert trace.continuation == greedy_reference(target, PROMPTS[0], NEW_TOKENS + 8)
    assert len(trace.draft_argmax) == len(trace.continuation) + 1
    assert set(trace.exits) == {"2", "3"} and len(trace.exits["3"].argmax) == len(trace.continuation) + 1
    # Teacher-forced draft argmax = what the draft alone would say after each prefix.
    with torch.no_grad():
        logits = draft(torch.tensor([PROMPTS[0] + trace.continuation[:5]])).logits[0, -1]
    assert trace.draft_argmax[5] == int(logits.argmax())


@pytest.mark.parametrize(
    "mode", [Mode.CLOUD_AR, Mode.SD, Mode.SD_EE, Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED], ids=lambda m: m.value
)
@pytest.mark.parametrize("gamma", [1, 4, 7])
def test_replay_is_exact_in_tokens_and_verdicts(mode: Mode, gamma: int) -> None:
    config = SimConfig(modes=(mode.value,), max_new_tokens=NEW_TOKENS, gamma=gamma)
    records = run_mode(traces(), mode, PROFILE, Link(one_way_s=0.02), config)
    target, draft = models()
    for trace, record in zip(traces(), records):
        assert record["tokens"] == trace.continuation[:NEW_TOKENS]
        if mode is Mode.CLOUD_AR:
            continue
        real = LocalEngine(runtime(), DraftRuntime(draft)).generate(
            trace.prompt_ids, Mode.SD, GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=gamma)
        )
        # Same rounds, same verdicts: the speculative modes decide alike; only time differs.
        assert (record["stats"]["rounds"], record["stats"]["accepted"]) == (real.stats.rounds, real.stats.accepted)


@pytest.mark.parametrize("exit_candidates", [True, False], ids=["candidate-ids", "full-vocab"])
def test_sd_ee_would_be_hits_match_the_real_engine(exit_candidates: bool) -> None:
    """Traces record each exit's reading over the whole vocabulary and over the draft's
    candidates: replayed either way, the would-be hits are the real engine's."""
    target, draft = models()
    config = SimConfig(modes=("sd-ee",), max_new_tokens=NEW_TOKENS, gamma=3, exit_candidates=exit_candidates)
    records = run_mode(traces(), Mode.SD_EE, PROFILE, Link(), config)
    assert sum(r["stats"]["hits"] for r in records) > 0
    for trace, record in zip(traces(), records):
        real = LocalEngine(runtime(), DraftRuntime(draft), exit_candidates=exit_candidates).generate(
            trace.prompt_ids, Mode.SD_EE, GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=3)
        )
        assert record["stats"]["hits"] == real.stats.hits
        assert record["stats"]["hits"] + record["stats"]["misses"] + record["stats"]["no_hint"] == real.stats.rounds


def test_batching_verifier_slows_each_client_as_clients_grow() -> None:
    config = SimConfig(modes=("cloud-ar", "sd"), max_new_tokens=NEW_TOKENS, gamma=4)
    counts = (1, 3, 6, 24)
    points = clients_sweep(traces(), PROFILE, Link(one_way_s=0.02), "wan", ("cloud-ar", "sd"), counts, config)
    for mode in ("cloud-ar", "sd"):
        rates = [points[n][mode]["per_client_tokens_per_s_median"] for n in counts]
        assert rates[0] >= rates[1] >= rates[2] >= rates[3] > 0
        busy = [points[n][mode]["server_busy_share"] for n in counts]
        assert all(0 < b <= 1.0 + 1e-9 for b in busy)
        # The verifier's time per token falls as batches fill (a pass of 8 costs 2 of 1 here).
        assert points[24][mode]["server_s_per_token"] < points[1][mode]["server_s_per_token"]
    # A speculative token costs the verifier fewer passes than a decoded one.
    assert points[1]["sd"]["target_passes_per_token"] < points[1]["cloud-ar"]["target_passes_per_token"] == 1.0


def test_h200_profile_reads_the_measured_costs() -> None:
    profile = h200_profile(None)
    assert profile.forward_s(1) == pytest.approx(0.0174, abs=0.001)
    assert profile.forward_s(5) == pytest.approx(0.0211, abs=0.001)
    assert profile.batch_s([0.0209] * 32) == pytest.approx(0.0916, abs=0.002)


@pytest.mark.parametrize("mode", [Mode.SD, Mode.SD_EE_PIPELINED], ids=lambda m: m.value)
def test_a_text_that_ends_inside_a_block_replays_like_the_real_engine(mode: Mode) -> None:
    """A trace that ends in EOS has no record past it; a block drafted across the end must still
    replay (the verdict ends at the target's EOS), with the real engine's tokens and rounds."""
    target, draft = models()
    full = traces()[0].continuation
    eos = next(t for i, t in enumerate(full) if i >= 10 and t not in full[:i])  # a token first seen late
    trace = record_trace(runtime(), draft, PROMPTS[0], NEW_TOKENS, [eos], "eos", "test")
    assert trace.ended_in_eos and len(trace.continuation) < NEW_TOKENS
    config = SimConfig(modes=(mode.value,), max_new_tokens=NEW_TOKENS, gamma=7)
    (record,) = run_mode((trace,), mode, PROFILE, Link(one_way_s=0.02), config)
    real = LocalEngine(runtime(), DraftRuntime(draft)).generate(
        trace.prompt_ids, Mode.SD, GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=7, eos_ids=frozenset({eos}))
    )
    assert record["tokens"] == trace.continuation == real.tokens
    assert record["stats"]["rounds"] == real.stats.rounds


def test_simulate_sweep_writes_the_capacity_table_and_picture(tmp_path, capsys) -> None:
    import json

    from edgespec.cli import main
    from edgespec.drivers.trace import write_traces

    write_traces(
        tmp_path / "traces", traces(), {"target": "tiny", "draft": "tiny-skip", "dtype": "float32", "exits": "test"}
    )
    PROFILE.save(tmp_path / "hardware.json")
    common = [
        "simulate",
        "--traces",
        str(tmp_path / "traces"),
        "--hardware",
        str(tmp_path / "hardware.json"),
        "--profiles",
        "wan",
        "--modes",
        "cloud-ar,sd",
        "--max-new-tokens",
        str(NEW_TOKENS),
    ]
    assert main([*common, "--clients", "1,3,6", "--out", str(tmp_path / "sim")]) == 0
    summary = json.loads((tmp_path / "sim" / "summary.json").read_text())
    assert set(summary["sweep"]) == {"1", "3", "6"}
    point = summary["sweep"]["6"]["profiles"]["wan"]["sd"]
    assert {
        "per_client_tokens_per_s_p10",
        "server_s_per_token",
        "target_passes_per_token",
        "decode_tokens_per_s",
    } <= set(point)
    table = summary["capacity"]["wan"]
    single = summary["sweep"]["1"]["profiles"]["wan"]["cloud-ar"]["per_client_tokens_per_s_median"]
    assert table["slo_tokens_per_s"] == pytest.approx(single / 2)
    assert set(table["modes"]) == {"cloud-ar", "sd"} and "vs_cloud-ar" in table["modes"]["sd"]
    report = (tmp_path / "sim" / "report.md").read_text()
    assert "## Capacity: wan" in report and "Capacity vs cloud-ar" in report
    assert (tmp_path / "sim" / "clients.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main([*common, "--clients", "3,6", "--no-plots", "--out", str(tmp_path / "no-single")]) != 0
    assert (
        "include 1 in --clients" in capsys.readouterr().err and not (tmp_path / "no-single").exists()
    )  # refused before any work
    assert (
        main(
            [*common, "--clients", "3,6", "--no-plots", "--slo-tokens-per-s", "1e9", "--out", str(tmp_path / "strict")]
        )
        == 0
    )
    strict = json.loads((tmp_path / "strict" / "summary.json").read_text())["capacity"]["wan"]["modes"]
    assert strict["sd"]["capacity"] == 0 and strict["sd"]["vs_cloud-ar"] is None  # nobody meets it
    # cloud-ar alone: its table, and no speedup map (there is nothing to compare it with).
    alone = [arg if arg != "cloud-ar,sd" else "cloud-ar" for arg in common]
    capsys.readouterr()
    assert main([*alone, "--out", str(tmp_path / "alone")]) == 0
    assert not (tmp_path / "alone" / "speedup-map.png").exists() and "speedup-map" not in capsys.readouterr().out


def test_an_exit_oracle_streams_the_verdict_it_is_told_to_and_changes_no_token() -> None:
    from edgespec.drivers.trace_backends import ExitOracle

    def run(oracle: ExitOracle) -> list[dict]:
        config = SimConfig(
            modes=("sd-ee-pipelined",), max_new_tokens=NEW_TOKENS, gamma=4, early_verdicts="on", exit_oracle=oracle
        )
        return run_mode(traces(), Mode.SD_EE_PIPELINED, PROFILE, Link(one_way_s=0.02), config)

    right, useless = run(ExitOracle(2, 1.0)), run(ExitOracle(2, 0.0))
    for trace, good, bad in zip(traces(), right, useless):
        assert good["tokens"] == bad["tokens"] == trace.continuation[:NEW_TOKENS]
        assert bad["stats"]["hits_by_source"].get("exit 2", 0) == 0
    # Every round the guess does not already cover is a hit of the perfect exit.
    assert all(r["stats"]["misses"] == 0 and r["stats"]["hits_by_source"].get("exit 2", 0) > 0 for r in right)
    with pytest.raises(ValueError, match="LAYER:ACCURACY"):
        ExitOracle.parse("21:often")


def test_the_gpu_capacity_check_scripts_the_same_rounds_onto_a_repeating_target() -> None:
    """The GPU capacity check (edgespec.sim.scripted) maps a trace of the real pair onto a target
    that repeats its last prompt token: the draft agrees exactly where it agreed before, so every round accepts,
    commits and costs what the original round did (here: replayed side by side, 3 clients)."""
    from edgespec.sim import scripted as script

    originals = [t for t in traces() if not t.ended_in_eos]
    scripted = [script.scripted_trace(t, vocab=96) for t in originals]
    for trace in scripted:
        assert set(trace.continuation) == {trace.prompt_ids[-1]}
    for mode in (Mode.SD, Mode.SD_EE_PIPELINED):
        config = SimConfig(modes=(mode.value,), max_new_tokens=NEW_TOKENS, gamma=4, clients=3, early_verdicts="off")
        before = run_mode(originals, mode, PROFILE, Link(one_way_s=0.02), config)
        after = run_mode(scripted, mode, PROFILE, Link(one_way_s=0.02), config)
        for a, b in zip(before, after):
            assert a["stats"]["rounds"] == b["stats"]["rounds"] and len(a["tokens"]) == len(b["tokens"])
            assert a["stats"]["accepted"] == b["stats"]["accepted"]
            assert a["stats"]["total_s"] == pytest.approx(b["stats"]["total_s"])
