"""Every speculative mode in process on the real pair (Qwen2.5-Coder 0.5B drafting for 1.5B,
fp32) equals `transformers` `generate`, on MT-bench and HumanEval prompts: the in-process engine
runs the round core on a virtual clock that charges each side its measured cost, with the `wan`
link's delay, so pre-drafts, pipelined blocks and their hits and misses happen as over the
network."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.data.prompt_sets import load_prompts
from edgespec.drivers.local_engine import LocalEngine
from edgespec.drivers.virtual_devices import Link
from edgespec.link import resolve_profile
from edgespec.models.draft import DraftRuntime
from edgespec.models.exit_choice import resolve_exits
from edgespec.models.loading import LoadedModel, load_model
from edgespec.models.target import TargetRuntime
from edgespec.prompting import eos_token_ids, render_prompt

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("EDGESPEC_REAL_PAIR"), reason="needs the real model pair: set EDGESPEC_REAL_PAIR=1"
    ),
]

TARGET, DRAFT = "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"
MODES = (Mode.SD, Mode.SD_EE, Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED)
NEW_TOKENS = 48
PROMPTS = [("mtbench", 0), ("mtbench", 1), ("humaneval", 0), ("humaneval", 1)]


@pytest.fixture(scope="module")
def target() -> LoadedModel:
    return load_model(TARGET, "float32")


@pytest.fixture(scope="module")
def engine(target: LoadedModel) -> LocalEngine:
    draft = load_model(DRAFT, "float32")
    exits = resolve_exits("auto", target.model, TARGET)
    link = Link(one_way_s=resolve_profile("wan", {}).one_way_delay_ms / 1000)
    return LocalEngine(TargetRuntime(target.model, exits), DraftRuntime(draft.model), link)


def reference(target: LoadedModel, prompt_ids: list[int], eos: Any) -> list[int]:
    """The oracle: `generate` on the target, greedy, fp32."""
    with torch.inference_mode():
        out = target.model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            eos_token_id=sorted(eos) or None,
            pad_token_id=0,
        )
    return out[0, len(prompt_ids) :].tolist()


@pytest.mark.parametrize("prompt_set, index", PROMPTS)
def test_every_speculative_mode_on_the_real_pair_equals_generate(
    target: LoadedModel, engine: LocalEngine, prompt_set: str, index: int
) -> None:
    record = load_prompts(prompt_set, index + 1)[index]
    prompt_ids = render_prompt(target.tokenizer, record.messages)
    eos = eos_token_ids(target.model, target.tokenizer)
    expected = reference(target, prompt_ids, eos)
    diverged = []
    for mode in MODES:
        # Pre-draft modes run once with the exits forced on and once as `auto` decides.
        for early in (True, None) if mode in (Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED) else (None,):
            config = GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=4, eos_ids=eos, early_verdicts=early)
            if engine.generate(prompt_ids, mode, config).tokens != expected:
                diverged.append(f"{mode.value} (early verdicts {'on' if early else 'auto'})")
    assert diverged == []
