"""`edgespec profile`'s measuring code on tiny models: every figure it reports is there, in the
shapes asked for, and the command line reaches it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgespec.cli import main
from edgespec.models.exit_heads import ExitHeads
from edgespec.models.target import TargetRuntime
from edgespec.sim.exit_costs import measure_exit_costs
from edgespec.sim.profiling import (
    BatchedCostConfig,
    count_pass_operations,
    launch_bound_target,
    pass_costs,
    profile_batched_costs,
    random_weight_target,
)
from tests.support.tiny_models import tiny_model


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    tiny_model("qwen2", seed=0).config.save_pretrained(tmp_path)
    return tmp_path


def test_a_random_weight_target_has_the_configured_shapes(config_dir: Path) -> None:
    model = random_weight_target(str(config_dir), "float32", "cpu")
    assert model.config.num_hidden_layers == 4
    assert model.get_input_embeddings().weight.shape == (96, 64)


def test_the_batched_profile_reports_every_gamma_and_batch_with_exit_columns_only_with_exits(config_dir: Path) -> None:
    model = random_weight_target(str(config_dir), "float32", "cpu")
    config = BatchedCostConfig(context=16, gammas=(1, 4), batches=(1, 2), repeats=1)
    steps: list[str] = []
    plain = profile_batched_costs(
        TargetRuntime(model), torch.device("cpu"), config, on_step=lambda label, row: steps.append(label)
    )
    assert steps == ["verify gamma=1", "verify gamma=4", "batch 1", "batch 2"]
    assert plain["exit_layers"] == [] and plain["context"] == 16 and plain["device"] == "cpu"
    assert set(plain["verify"]) == {"1", "4"} and set(plain["verify"]["4"]) == {"ms"}
    expected = {"verify_gamma4_ms", "decode_ms", "verify_gamma4_host_logits_ms", "decode_host_logits_ms"}
    assert set(plain["batched"]["2"]) == expected
    assert plain["prefill_ms"] > 0 and plain["decode_ms"] > 0

    exits = ExitHeads.logit_lens([2], 64)
    with_exits = profile_batched_costs(TargetRuntime(model, exits), torch.device("cpu"), config)
    assert with_exits["exit_layers"] == [2]
    assert set(with_exits["verify"]["1"]) == {"ms", "with_exits_ms"}
    assert "verify_gamma4_candidate_exits_ms" in with_exits["batched"]["1"]


def test_pass_costs_time_each_shape_and_leave_every_row_at_its_context() -> None:
    runtime = TargetRuntime(tiny_model("qwen2", seed=0))
    shapes = ((1, 5), (3, 16))
    rows = pass_costs(runtime, shapes, context=8, repeats=1)
    assert [(r["rows"], r["feed"], r["padded_tokens"]) for r in rows] == [(1, 5, 5), (3, 16, 48)]
    assert all(r["ms"] > 0 for r in rows)


def test_exit_costs_compare_the_three_kinds_of_forward() -> None:
    runtime = TargetRuntime(tiny_model("qwen2", seed=0), ExitHeads.logit_lens([1, 3], 64))
    repeats: list[int] = []
    result = measure_exit_costs(runtime, repeats=2, on_repeat=repeats.append)
    assert repeats == [0, 1]
    assert result["exit_layers"] == [1, 3] and result["repeats"] == 2
    assert result["verify_ms"] > 0 and result["edge_top8_ms_per_drafted_token"] >= 0
    assert set(result["one_exit_reading_ms"]) == {"full_vocab", "candidates"}


def test_exit_costs_need_exits() -> None:
    with pytest.raises(ValueError, match="no exits"):
        measure_exit_costs(TargetRuntime(tiny_model("qwen2", seed=0)), repeats=1)


def test_a_batched_pass_counts_its_operations() -> None:
    counted = count_pass_operations(TargetRuntime(launch_bound_target(layers=2)), sessions=3, timing_repeats=1)
    assert counted["sessions"] == 3
    assert 0 < counted["memory_moves"] < counted["operations"]


def test_the_profile_command_writes_the_batched_profile(
    config_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "costs.json"
    argv = [
        "profile",
        "batched",
        "--config",
        str(config_dir),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--context",
        "8",
        "--gammas",
        "2",
        "--batches",
        "2",
        "--repeats",
        "1",
        "--logit-lens-exits",
        "2",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    written = json.loads(out.read_text())
    assert written["config"] == str(config_dir) and written["dtype"] == "float32" and written["exit_layers"] == [2]
    assert "batch 2: " in capsys.readouterr().out
