"""Real weights: the smallest preset installs, converts, loads and decodes greedily."""

from __future__ import annotations

import pytest

from edgespec.models.loading import LoadedModel, load_model

pytestmark = pytest.mark.slow

PROMPT = [{"role": "user", "content": "Write a Python function that adds two numbers."}]


@pytest.fixture(scope="module")
def smollm() -> LoadedModel:
    return load_model("smollm2-135m", dtype="float32")


def _greedy(loaded: LoadedModel, n: int) -> list[int]:
    import torch

    inputs = loaded.tokenizer.apply_chat_template(
        PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.inference_mode():
        out = loaded.model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def test_loads_in_eval_mode_without_grads(smollm: LoadedModel) -> None:
    import torch

    assert smollm.name == "smollm2-135m" and smollm.dtype == "float32"
    assert not smollm.model.training
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in smollm.model.parameters())
    assert smollm.model.config.num_hidden_layers == 30


def test_chat_template_and_eos(smollm: LoadedModel) -> None:
    tok = smollm.tokenizer
    assert tok.chat_template
    text = tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    assert text.rstrip().endswith("<|im_start|>assistant")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    eos = smollm.model.generation_config.eos_token_id
    assert im_end in (eos if isinstance(eos, list) else [eos])
    assert smollm.model.generation_config.pad_token_id is not None


def test_greedy_generation_is_deterministic(smollm: LoadedModel) -> None:
    first = _greedy(smollm, 8)
    assert len(first) == 8
    assert first == _greedy(smollm, 8)
    assert smollm.tokenizer.decode(first).strip(), "decoded to nothing"


def test_bf16_load_is_fast_cast_of_the_same_checkpoint(smollm: LoadedModel) -> None:
    import torch

    bf16 = load_model("smollm2-135m", dtype="bfloat16")
    assert bf16.path == smollm.path
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
