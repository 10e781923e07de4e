"""A grammar in process: the in-process engine holds the target to it as the networked verifier
does, in every mode with a target. Greedy output equals `generate` with the same token mask as a
logits processor (fp32), whether the draft drafts under the mask or not; sampled output follows
the grammar; each side's grammar work is timed in the stats."""

from __future__ import annotations

import json
from functools import lru_cache

import pytest
import torch

from edgespec.core.config import GenerationConfig, SamplingParams
from edgespec.core.grammar import Grammar
from edgespec.core.modes import Mode
from edgespec.decoding.grammar import GrammarMatcher, tokenizer_fingerprint
from edgespec.drivers.local_engine import LocalEngine
from edgespec.exits.heads import ExitHeads, ExitSpec
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from tests.support.grammar_oracle import masked_generate
from tests.support.json_tokenizer import json_tokenizer
from tests.support.tiny_models import layer_skip_copy, tiny_model

NEW_TOKENS = 48
TARGET_MODES = [Mode.CLOUD_AR, Mode.SD, Mode.SD_EE, Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED, Mode.CLOUD_SD]
RECORD = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@lru_cache(maxsize=None)
def tokenizer():  # type: ignore[no-untyped-def]
    return json_tokenizer()


EOS = tokenizer().eos_token_id
PROMPT = tokenizer().encode("who: ")
GRAMMARS = {
    "json_schema": Grammar("json_schema", json.dumps(RECORD), tokenizer_fingerprint(tokenizer())),
    "regex": Grammar("regex", r"(left|right) [0-9]{1,3}", tokenizer_fingerprint(tokenizer())),
}


@lru_cache(maxsize=None)
def target_model() -> torch.nn.Module:
    return tiny_model("qwen2", seed=0)


def engine(with_tokenizer: bool = True) -> LocalEngine:
    exits = ExitHeads([ExitSpec(2), ExitSpec(3)], target_model().config.hidden_size)
    draft = DraftRuntime(layer_skip_copy(tiny_model("qwen2", seed=0), keep=3))
    return LocalEngine(
        TargetRuntime(tiny_model("qwen2", seed=0), exits), draft, tokenizer=tokenizer() if with_tokenizer else None
    )


def config(grammar: Grammar, **fields) -> GenerationConfig:  # type: ignore[no-untyped-def]
    defaults = {"max_new_tokens": NEW_TOKENS, "gamma": 3, "eos_ids": frozenset({EOS}), "grammar": grammar}
    return GenerationConfig(**{**defaults, **fields})


@pytest.mark.parametrize("name", sorted(GRAMMARS))
@pytest.mark.parametrize("mode", TARGET_MODES, ids=lambda m: m.value)
def test_greedy_constrained_output_equals_masked_generate_in_process(mode: Mode, name: str) -> None:
    expected = masked_generate(target_model(), tokenizer(), GRAMMARS[name], PROMPT, NEW_TOKENS, EOS)
    result = engine().generate(PROMPT, mode, config(GRAMMARS[name], early_verdicts=mode.uses_exits))
    assert result.tokens == expected
    assert result.tokens[-1] == EOS  # the grammar ended the text, not the token limit
    assert result.stats.server_mask_s > 0
    if mode.uses_draft:
        assert result.stats.edge_mask_s > 0 and result.stats.rounds >= 1


def test_the_free_output_differs_so_the_mask_is_doing_the_work() -> None:
    free = engine().generate(PROMPT, Mode.SD, GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=3))
    assert free.stats.edge_mask_s == 0 and free.stats.server_mask_s == 0
    with pytest.raises(ValueError):
        json.loads(tokenizer().decode(free.tokens, skip_special_tokens=True))
    constrained = engine().generate(PROMPT, Mode.SD, config(GRAMMARS["json_schema"]))
    record = json.loads(tokenizer().decode(constrained.tokens, skip_special_tokens=True))
    assert set(record) == {"name", "age"} and record["age"] >= 0


def test_the_in_process_engine_needs_a_tokenizer_for_a_grammar() -> None:
    with pytest.raises(ValueError, match="tokenizer"):
        engine(with_tokenizer=False).generate(PROMPT, Mode.SD, config(GRAMMARS["json_schema"]))


@pytest.mark.parametrize("mode", [Mode.SD, Mode.SD_EE_PIPELINED, Mode.CLOUD_AR, Mode.CLOUD_SD], ids=lambda m: m.value)
def test_sampled_output_follows_the_grammar_in_process(mode: Mode) -> None:
    for seed in range(3):
        sampled = config(GRAMMARS["json_schema"], sampling=SamplingParams(temperature=1.5), seed=seed)
        tokens = engine().generate(PROMPT, mode, sampled).tokens
        matcher = GrammarMatcher(GRAMMARS["json_schema"], tokenizer(), target_model().config.vocab_size, [EOS])
        matcher.advance(tokens)  # raises if any token breaks the grammar
        assert tokens[-1] == EOS or len(tokens) == NEW_TOKENS


def test_edge_only_has_no_target_to_constrain_in_process() -> None:
    with pytest.raises(ValueError, match="edge-only"):
        engine().generate(PROMPT, Mode.EDGE_ONLY, config(GRAMMARS["regex"]))
