"""The prepared accelerator run's scripts, run here on the CPU with a tiny config so the device call
cannot fail on a typo: the per-pass costs of both engines with the re-derived profile, and a
capacity point of every mode the run measures on the paged engine (the latter is slow: it starts a
server, a link emulator and client processes per mode)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import Qwen2Config

from edgespec.drivers.cost_profile import HardwareProfile
from edgespec.drivers.trace import Trace, write_traces

ROOT = Path(__file__).resolve().parents[2]


def tiny_config(directory: Path) -> Path:
    config = Qwen2Config(
        vocab_size=2048,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    config.save_pretrained(directory)
    return directory


def run_script(*argv: str, timeout: float) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_the_costs_script_measures_both_engines_and_derives_a_profile(tmp_path: Path) -> None:
    config = tiny_config(tmp_path / "config")
    out = tmp_path / "costs"
    script = str(ROOT / "scripts" / "gpu_paged_costs.py")
    options = ["--device", "cpu", "--dtype", "float32", "--batches", "1,3", "--gammas", "1,4", "--repeats", "1"]
    run_script(script, "--config", str(config), *options, "--context", "24", "--out", str(out),
               "--profile-out", str(tmp_path / "profile.json"), timeout=300)  # fmt: skip
    for engine in ("paged", "transformers"):
        costs = json.loads((tmp_path / f"costs-{engine}.json").read_text())
        assert costs["engine"] == engine and set(costs["batched"]) == {"1", "3"} and set(costs["verify"]) == {"1", "4"}
        assert costs["decode_ms"] > 0 and costs["batched"]["3"]["verify_gamma4_ms"] > 0
    profile = HardwareProfile.load(tmp_path / "profile.json")
    assert profile.name == "h200-paged" and set(profile.forward_ms) == {1, 2, 5} and 3 in profile.batch_factor


def synthetic_traces(directory: Path, count: int = 3) -> Path:
    traces = []
    for index in range(count):
        continuation = [300 + (index + j) % 50 for j in range(12)]
        draft = [token if j % 3 else token + 1 for j, token in enumerate(continuation)] + [7]
        traces.append(
            Trace(
                id=f"synthetic-{index}",
                prompt_set="synthetic",
                prompt_ids=[100 + index + j for j in range(20 + 5 * index)],
                continuation=continuation,
                ended_in_eos=False,
                draft_argmax=draft,
                draft_topk_ids=[[d, d + 1] for d in draft],
                draft_topk_probs=[[0.6, 0.2] for _ in draft],
                num_layers=2,
            )
        )
    write_traces(directory, traces, {"source": "synthetic, for the dry run"})
    return directory


@pytest.mark.slow
def test_the_capacity_script_runs_every_mode_on_the_paged_engine(tmp_path: Path) -> None:
    config = tiny_config(tmp_path / "config")
    traces = synthetic_traces(tmp_path / "traces")
    edge = tmp_path / "edge.json"
    HardwareProfile(name="edge", forward_ms={1: 5.0}, prefill_ms_per_token=0.1, draft_ms_per_token=2.0).save(edge)
    out = tmp_path / "capacity.json"
    run_script(
        str(ROOT / "scripts" / "gpu_capacity_check.py"), "--config", str(config), "--traces", str(traces),
        "--edge-profile", str(edge), "--clients", "3", "--modes", "cloud-ar,sd,sd-ee-pipelined,cloud-sd",
        "--engine", "paged", "--cloud-draft-config", str(config), "--device", "cpu", "--dtype", "float32",
        "--max-new-tokens", "8", "--processes", "1", "--link", "lan", "--max-batch", "4", "--out", str(out),
        timeout=900,
    )  # fmt: skip
    points = json.loads(out.read_text())["points"]
    assert [point["mode"] for point in points] == ["cloud-ar", "sd", "sd-ee-pipelined", "cloud-sd"]
    for point in points:
        assert point["clients"] == 3 and point["server"]["in_server_pass_ms"] is not None
