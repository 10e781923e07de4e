"""Structured output on the real pair (Qwen2.5-Coder 0.5B drafting for 1.5B, fp32, in process):
greedy output under each JSON schema of a small extraction set equals `generate` with the same
token mask as a logits processor, in `sd` and `sd-ee-pipelined`, and every output is a valid
JSON value of its schema."""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import LogitsProcessorList

from edgespec.core.config import GenerationConfig
from edgespec.core.grammar import Grammar
from edgespec.core.modes import Mode
from edgespec.data.extraction_prompts import CASES, messages
from edgespec.decoding.grammar import tokenizer_fingerprint
from edgespec.drivers.local_engine import LocalEngine
from edgespec.drivers.virtual_devices import Link
from edgespec.link import resolve_profile
from edgespec.models.draft import DraftRuntime
from edgespec.models.exit_choice import resolve_exits
from edgespec.models.loading import LoadedModel, load_model
from edgespec.models.target import TargetRuntime
from edgespec.prompting import eos_token_ids, render_prompt
from tests.support.grammar_oracle import GrammarLogitsProcessor

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("EDGESPEC_REAL_PAIR"), reason="needs the real model pair: set EDGESPEC_REAL_PAIR=1"
    ),
]

TARGET, DRAFT = "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"
NEW_TOKENS = 96


@pytest.fixture(scope="module")
def target() -> LoadedModel:
    return load_model(TARGET, "float32")


@pytest.fixture(scope="module")
def engine(target: LoadedModel) -> LocalEngine:
    draft = load_model(DRAFT, "float32")
    exits = resolve_exits("auto", target.model, TARGET)
    link = Link(one_way_s=resolve_profile("wan", {}).one_way_delay_ms / 1000)
    return LocalEngine(TargetRuntime(target.model, exits), DraftRuntime(draft.model), link, tokenizer=target.tokenizer)


def masked_reference(target: LoadedModel, grammar: Grammar, prompt_ids: list[int], eos: list[int]) -> list[int]:
    """The oracle: `generate` on the target, greedy, fp32, the grammar's mask as a logits processor."""
    vocab = target.model.config.vocab_size
    processor = GrammarLogitsProcessor(grammar, target.tokenizer, vocab, len(prompt_ids), eos)
    with torch.inference_mode():
        out = target.model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=0,
            logits_processor=LogitsProcessorList([processor]),
        )
    return out[0, len(prompt_ids) :].tolist()


@pytest.mark.parametrize("name, schema, instruction", CASES, ids=[case[0] for case in CASES])
def test_schema_output_on_the_real_pair_equals_masked_generate(
    target: LoadedModel, engine: LocalEngine, name: str, schema: dict, instruction: str
) -> None:
    tokenizer = target.tokenizer
    prompt_ids = render_prompt(tokenizer, messages(instruction))
    eos = sorted(eos_token_ids(target.model, tokenizer))
    grammar = Grammar("json_schema", json.dumps(schema), tokenizer_fingerprint(tokenizer))
    expected = masked_reference(target, grammar, prompt_ids, eos)
    assert expected[-1] in eos, "the oracle ran out of tokens: raise NEW_TOKENS"
    value = json.loads(tokenizer.decode(expected, skip_special_tokens=True))
    assert set(value) == set(schema["required"])
    for mode in (Mode.SD, Mode.SD_EE_PIPELINED):
        config = GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=4, eos_ids=frozenset(eos), grammar=grammar)
        result = engine.generate(prompt_ids, mode, config)
        assert result.tokens == expected, f"{mode.value} diverged from masked generate on {name}"
