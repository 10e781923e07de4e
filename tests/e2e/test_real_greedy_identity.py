"""Real weights, the oracle: SmolLM2-135M in fp32 verifies, the same weights in bf16 draft (a
real draft that disagrees now and then), and every lossless mode equals `generate`."""

from __future__ import annotations

import pytest
import torch

from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.drivers.local_engine import LocalEngine
from edgespec.exits.heads import ExitHeads
from edgespec.models.draft import DraftRuntime
from edgespec.models.loading import LoadedModel, load_model
from edgespec.models.target import TargetRuntime
from edgespec.prompting import eos_token_ids, render_prompt

pytestmark = pytest.mark.slow

PROMPTS = ["Write a Python function that adds two numbers.", "Name three colours of the rainbow."]
NEW_TOKENS = 40


@pytest.fixture(scope="module")
def target() -> LoadedModel:
    return load_model("smollm2-135m", dtype="float32")


@pytest.fixture(scope="module")
def engine(target: LoadedModel) -> LocalEngine:
    draft = load_model("smollm2-135m", dtype="bfloat16")
    exits = ExitHeads.logit_lens([15, 22, 26], target.model.config.hidden_size)
    return LocalEngine(TargetRuntime(target.model, exits), DraftRuntime(draft.model))


def reference(target: LoadedModel, prompt_ids: list[int]) -> list[int]:
    with torch.inference_mode():
        out = target.model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
        )
    return out[0, len(prompt_ids) :].tolist()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_real_model_greedy_equals_generate_in_every_lossless_mode(
    target: LoadedModel, engine: LocalEngine, prompt: str
) -> None:
    prompt_ids = render_prompt(target.tokenizer, prompt)
    expected = reference(target, prompt_ids)
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=4, eos_ids=eos_token_ids(target.model, target.tokenizer))
    for mode in (Mode.CLOUD_AR, Mode.SD, Mode.SD_EE):
        result = engine.generate(prompt_ids, mode, config)
        assert result.tokens == expected, f"{mode.value} diverged from generate"
        if mode is Mode.SD:
            assert result.stats.accepted > 0


def test_llamacpp_draft_is_lossless_too(target: LoadedModel) -> None:
    """The draft backend changes speed, never the output: llama.cpp drafting from the quantised
    GGUF, the fp32 transformers target verifying, equals `generate`."""
    from edgespec.models.fetch import gguf_path
    from edgespec.models.llamacpp_draft import LlamaCppDraft

    engine = LocalEngine(TargetRuntime(target.model), LlamaCppDraft(gguf_path("smollm2-135m"), threads=1))
    prompt_ids = render_prompt(target.tokenizer, PROMPTS[0])
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=4, eos_ids=eos_token_ids(target.model, target.tokenizer))
    result = engine.generate(prompt_ids, Mode.SD, config)
    assert result.tokens == reference(target, prompt_ids)
    assert result.stats.accepted > 0
