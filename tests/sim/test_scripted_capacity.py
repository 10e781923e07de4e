"""The GPU capacity check's parts on tiny models: the repeating target repeats, the scripted
draft replays its trace, and the pass diagnostics report every shape they time."""

from __future__ import annotations

import gc
from pathlib import Path
from types import SimpleNamespace

import torch

from edgespec.core.config import GREEDY
from edgespec.drivers.cost_profile import HardwareProfile
from edgespec.drivers.trace import Trace
from edgespec.models.target import TargetRuntime
from edgespec.sim.pass_diagnostics import (
    GarbageCollections,
    in_server_pass_ms,
    isolated_pass_ms,
    profile_in_server_passes,
    ragged_requests,
)
from edgespec.sim.profiling import launch_bound_target
from edgespec.sim.scripted import ScriptedDraft, repeating_target, scripted_trace
from tests.support.tiny_models import tiny_model


def test_the_repeating_target_writes_the_last_prompt_token_over_and_over(tmp_path: Path) -> None:
    tiny_model("qwen2", seed=0).config.save_pretrained(tmp_path)
    runtime = TargetRuntime(repeating_target(str(tmp_path), "float32", "cpu"))
    for prompt in ([5, 17, 42], [90, 3], [7]):
        assert runtime.score_tail(prompt, 1, argmax_only=True).tolist() == [prompt[-1]]


def _trace() -> Trace:
    # The real draft agreed at positions 0 and 2, not at 1.
    return Trace(
        id="t",
        prompt_set="test",
        prompt_ids=[3, 200],
        continuation=[7, 8, 9, 10],
        ended_in_eos=False,
        draft_argmax=[7, 1, 9, 10, 11],
        draft_topk_ids=[[7], [1], [9], [10], [11]],
        draft_topk_probs=[[0.9], [0.6], [0.9], [0.9], [0.9]],
        num_layers=4,
    )


def test_the_scripted_draft_proposes_the_repeated_token_where_the_real_draft_agreed() -> None:
    trace = scripted_trace(_trace(), vocab=96)
    repeated = 200 % 96
    assert trace.prompt_ids == [3, repeated] and trace.continuation == [repeated] * 4
    assert trace.draft_argmax == [repeated, repeated + 1, repeated, repeated, repeated]
    profile = HardwareProfile(name="t", forward_ms={1: 1.0}, prefill_ms_per_token=0.0, draft_ms_per_token=0.0)
    draft = ScriptedDraft(trace, profile, vocab=96)
    block = draft.draft(trace.prompt_ids, 2, GREEDY)
    assert block.tokens == [repeated, repeated + 1]
    assert block.runner_up == [repeated + 1] * 2


def test_pass_diagnostics_time_every_shape_and_profile_only_the_chosen_server_passes() -> None:
    runtime = TargetRuntime(launch_bound_target(layers=2))
    timed = isolated_pass_ms(runtime, "cpu", sizes=(1, 2), repeats=1)
    assert set(timed) == {"1x1", "1x5", "2x1", "2x5"} and all(len(v) == 2 for v in timed.values())

    tables: list[str] = []
    profile_in_server_passes(runtime, "cpu", count=1, tables=tables)
    for _ in range(6):
        runtime.score_batch(ragged_requests(runtime, 4, 5))
    assert len(tables) == 1 and tables[0].startswith("## in the server: 4 sessions, pass 5")
    del runtime.score_batch  # the instance's wrapper: back to the method


def test_in_server_passes_are_grouped_by_shape_without_prefill_passes() -> None:
    def one(rows: int, width: int, ms: float, prefill_rows: int = 0) -> SimpleNamespace:
        return SimpleNamespace(
            rows=rows, padded_tokens=rows * width, forward_ms=ms, thread_cpu_ms=ms / 2, prefill_rows=prefill_rows
        )

    passes = [one(4, 5, 10.0), one(4, 5, 12.0), one(4, 5, 14.0), one(2, 1, 3.0), one(4, 5, 99.0, prefill_rows=1)]
    assert in_server_pass_ms(passes) == {"4x5": [12.0, 6.0, 3]}


def test_garbage_collections_are_counted_by_thread_and_generation() -> None:
    collections = GarbageCollections()
    try:
        gc.collect()
    finally:
        collections.stop()
    summary = collections.summary()
    assert summary["MainThread"]["2"][0] >= 1
    assert torch.is_tensor(torch.zeros(1))  # torch stays usable: the callback is gone
