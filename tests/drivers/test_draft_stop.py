"""A dynamic draft length (``draft_stop``) and runner-up branches: the draft's own confidence ends
a block and names the likeliest correction; nothing it says can change a committed token."""

from __future__ import annotations

import pytest
import torch

from edgespec.core.config import GenerationConfig, SamplingParams
from edgespec.core.modes import Mode
from edgespec.drivers.cost_profile import HardwareProfile
from edgespec.drivers.local_engine import LocalEngine
from edgespec.drivers.trace import Trace
from edgespec.drivers.virtual_devices import Link
from edgespec.models.draft import DraftRuntime, runner_up_id
from edgespec.models.target import TargetRuntime
from edgespec.sim.simulate import SimConfig, run_mode
from tests.support.tiny_models import greedy_reference, layer_skip_copy, tiny_model

PROMPT = [3, 17, 42, 8, 9, 61]
GREEDY = SamplingParams()
PROFILE = HardwareProfile(name="test", forward_ms={1: 10.0, 5: 12.0}, prefill_ms_per_token=0.5, draft_ms_per_token=3.0)


def draft_runtime() -> DraftRuntime:
    return DraftRuntime(layer_skip_copy(tiny_model("qwen2", seed=0), keep=2))


def test_the_draft_reports_each_tokens_confidence_and_runner_up() -> None:
    draft = draft_runtime()
    block = draft.draft(PROMPT, 5, GREEDY, alternatives=True)
    assert block.confidence is not None and block.runner_up is not None and len(block.confidence) == 5
    with torch.no_grad():
        logits = draft.model(torch.tensor([PROMPT + block.tokens])).logits[0, len(PROMPT) - 1 : -1].float()
    for row, token, sure, second in zip(logits, block.tokens, block.confidence, block.runner_up):
        probs = row.softmax(dim=-1)
        assert token == int(probs.argmax()) and sure == pytest.approx(float(probs[token]), rel=1e-4)
        assert second == int(probs.topk(2).indices[1])
    assert runner_up_id(torch.tensor([0.0, 5.0, 1.0]), 1) == 2
    assert draft.draft(PROMPT, 3, GREEDY).runner_up is None  # kept only when asked


def test_a_block_ends_after_the_first_token_the_draft_is_unsure_of() -> None:
    draft = draft_runtime()
    full = draft.draft(PROMPT, 6, GREEDY, alternatives=True)
    assert full.confidence is not None
    threshold = sorted(full.confidence)[2]  # a threshold some tokens fall under
    first_unsure = next(i for i, sure in enumerate(full.confidence) if sure < threshold)
    short = draft.draft(PROMPT, 6, GREEDY, stop_below=threshold)
    assert short.tokens == full.tokens[: first_unsure + 1]  # the same tokens, cut after the unsure one
    # A guess needs its bonus and one more token, whatever the confidence says.
    everything = draft.draft(PROMPT, 6, GREEDY, stop_below=0.999999, min_tokens=2)
    assert everything.tokens == full.tokens[:2]
    # Sampling drafts full blocks: the stop is a greedy rule.
    assert GenerationConfig(sampling=SamplingParams(temperature=1.0)).draft_stop_below() == 0.0
    with pytest.raises(ValueError, match="draft_stop"):
        GenerationConfig(draft_stop=1.0)


@pytest.mark.parametrize("mode", [Mode.SD, Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED], ids=lambda m: m.value)
@pytest.mark.parametrize("draft_stop", [0.0, 0.2, 0.5])
def test_every_mode_equals_generate_whatever_the_stop(mode: Mode, draft_stop: float) -> None:
    target = tiny_model("qwen2", seed=0)
    engine = LocalEngine(TargetRuntime(target), draft_runtime())
    result = engine.generate(
        PROMPT, mode, GenerationConfig(max_new_tokens=24, gamma=4, draft_stop=draft_stop, runner_up=True)
    )
    assert result.tokens == greedy_reference(target, PROMPT, 24)


def synthetic_trace(length: int = 48, every: int = 3) -> Trace:
    """A draft right but for every ``every``-th token, where it is unsure (0.35) and its
    runner-up is the target's token; elsewhere right and sure (0.9)."""
    continuation = list(range(100, 100 + length))
    argmax, ids, probs = [], [], []
    for i in range(length + 1):
        right = continuation[i] if i < length else 7
        if i % every == every - 1:
            argmax.append(999)
            ids.append([999, right, 5, 6, 7])
            probs.append([0.35, 0.3, 0.1, 0.1, 0.1])
        else:
            argmax.append(right)
            ids.append([right, 998, 5, 6, 7])
            probs.append([0.9, 0.05, 0.01, 0.01, 0.01])
    return Trace("synthetic", "test", [1, 2, 3], continuation, False, argmax, ids, probs, num_layers=4)


@pytest.mark.parametrize("draft_stop", [0.0, 0.4])
def test_runner_up_branches_hit_where_the_draft_is_unsure_and_change_no_token(draft_stop: float) -> None:
    trace = synthetic_trace()
    config = SimConfig(
        modes=("sd-ee-pipelined",), max_new_tokens=40, gamma=4, draft_stop=draft_stop, branches=2, runner_up=True
    )
    (record,) = run_mode([trace], Mode.SD_EE_PIPELINED, PROFILE, Link(one_way_s=0.02), config)
    assert record["tokens"] == trace.continuation[:40]
    hits = record["stats"]["hits_by_source"]
    assert hits.get("runner-up", 0) >= 4  # every unsure token is corrected by its runner-up
    (without,) = run_mode(
        [trace],
        Mode.SD_EE_PIPELINED,
        PROFILE,
        Link(one_way_s=0.02),
        SimConfig(
            modes=("sd-ee-pipelined",), max_new_tokens=40, gamma=4, draft_stop=draft_stop, branches=2, runner_up=False
        ),
    )
    assert without["tokens"] == record["tokens"] and "runner-up" not in without["stats"]["hits_by_source"]
    assert record["stats"]["total_s"] < without["stats"]["total_s"]
