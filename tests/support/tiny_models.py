"""Tiny randomly initialised Llama / Qwen2 models, built in seconds, for oracle tests."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM

VOCAB = 96


def tiny_model(family: str, seed: int, layers: int = 4, hidden: int = 64, vocab: int = VOCAB) -> PreTrainedModel:
    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        raise ValueError(family)
    # A wider init spreads the logits, so bf16-free fp32 block-vs-step rounding never flips an argmax.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    return model.float().eval().requires_grad_(False)


def greedy_reference(
    model: PreTrainedModel, prompt: list[int], max_new_tokens: int, eos: int | None = None
) -> list[int]:
    """The oracle: `transformers` `generate`, greedy."""
    return greedy_generate(model, prompt, max_new_tokens, eos)[0, len(prompt) :].tolist()


def greedy_generate(
    model: PreTrainedModel, prompt: list[int], max_new_tokens: int, eos: int | None, **options: Any
) -> Any:
    """`transformers` `generate`, greedy, on one unpadded prompt; ``options`` go to `generate` (a
    logits processor, ``output_scores``): the call every oracle of the tests shares."""
    return model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=0,
        **options,
    )


def layer_skip_copy(model: PreTrainedModel, keep: int) -> PreTrainedModel:
    """The model's first ``keep`` layers as a draft: agrees with the full model part of the time.

    Build it from a fresh model, never a deepcopy of one a TargetRuntime has hooked: a deepcopy
    would carry the exit hooks along.
    """
    model.model.layers = model.model.layers[:keep]
    model.config.num_hidden_layers = keep
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:keep]
    return model


@lru_cache(maxsize=None)
def qwen2_target() -> PreTrainedModel:
    """The tiny Qwen2 target the network tests serve (seed 0), built once per test process.
    Shared: use it read-only."""
    return tiny_model("qwen2", seed=0)


@lru_cache(maxsize=None)
def qwen2_layer_skip_draft() -> PreTrainedModel:
    """Its usual draft: the same weights with 3 of the 4 layers (agrees often, not always)."""
    return layer_skip_copy(tiny_model("qwen2", seed=0), keep=3)
