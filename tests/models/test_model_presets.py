"""Real weights: the smallest preset installs, converts, loads and decodes greedily."""

from __future__ import annotations

import pytest

from edgespec.models.loading import LoadedModel, load_model

pytestmark = pytest.mark.slow

PROMPT = [{"role": "user", "content": "Write a Python function that adds two numbers."}]


@pytest.fixture(scope="module")
def smollm() -> LoadedModel:
    return load_model("smollm2-135m", dtype="float32")


def _chat_inputs(loaded: LoadedModel) -> dict:
    return loaded.tokenizer.apply_chat_template(
        PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )


def _generate(loaded: LoadedModel, n: int) -> list[int]:
    import torch

    inputs = _chat_inputs(loaded)
    with torch.inference_mode():
        out = loaded.model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def _argmax_without_cache(loaded: LoadedModel, n: int) -> list[int]:
    """Greedy decoding the plainest way: the whole sequence through the model at every step,
    no KV cache, no generation utilities; the argmax of the last position's logits."""
    import torch

    ids = _chat_inputs(loaded)["input_ids"]
    new: list[int] = []
    with torch.inference_mode():
        for _ in range(n):
            token = int(loaded.model(input_ids=ids, use_cache=False).logits[0, -1].argmax())
            new.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return new


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


def test_greedy_generate_equals_step_by_step_argmax_without_cache(smollm: LoadedModel) -> None:
    generated = _generate(smollm, 8)
    assert len(generated) == 8
    assert generated == _argmax_without_cache(smollm, 8)
    # Real weights answer a coding request in words, not in noise.
    text = smollm.tokenizer.decode(generated)
    assert sum(ch.isalpha() for ch in text) > len(text) // 2, text


def test_bf16_load_is_fast_cast_of_the_same_checkpoint(smollm: LoadedModel) -> None:
    import torch

    bf16 = load_model("smollm2-135m", dtype="bfloat16")
    assert bf16.path == smollm.path
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
