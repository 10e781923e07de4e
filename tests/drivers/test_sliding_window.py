"""Mistral-style sliding-window attention: inside the window every mode equals `generate`;
a request that could reach the window is refused up front with a clear error (transformers'
sliding cache drops old states once full and cannot be rolled back after a rejection)."""

from __future__ import annotations

import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM

from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.drivers.local_engine import LocalEngine
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import SLIDING_WINDOW_BLOCK_ROOM, TargetRuntime
from tests.support.tiny_models import VOCAB, greedy_reference, layer_skip_copy

PROMPT = [3, 17, 42, 8, 9, 61]
NEW_TOKENS = 24
WINDOW = len(PROMPT) + NEW_TOKENS + SLIDING_WINDOW_BLOCK_ROOM + 1


def tiny_mistral(window: int) -> torch.nn.Module:
    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        sliding_window=window,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    model = MistralForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    return model.float().eval().requires_grad_(False)


@pytest.mark.parametrize("mode", [Mode.CLOUD_AR, Mode.SD], ids=lambda m: m.value)
def test_inside_the_window_a_sliding_window_target_equals_generate(mode: Mode) -> None:
    target = TargetRuntime(tiny_mistral(WINDOW))
    assert target.sliding_window == WINDOW
    draft = DraftRuntime(layer_skip_copy(tiny_mistral(WINDOW), keep=3))
    result = LocalEngine(target, draft).generate(PROMPT, mode, GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=4))
    assert result.tokens == greedy_reference(target.model, PROMPT, NEW_TOKENS)
    assert mode is Mode.CLOUD_AR or result.stats.accepted < result.stats.drafted, (
        "no rejection, so no rollback was tested"
    )


def test_a_request_that_could_reach_the_window_is_refused_before_any_work() -> None:
    target = TargetRuntime(tiny_mistral(WINDOW - 1))
    engine = LocalEngine(target, DraftRuntime(layer_skip_copy(tiny_mistral(WINDOW - 1), keep=3)))
    with pytest.raises(ValueError, match=f"sliding attention window of {WINDOW - 1} tokens"):
        engine.generate(PROMPT, Mode.SD, GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=4))
    assert len(target.kv) == 0
