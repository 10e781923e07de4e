"""A grammar constrains the target, losslessly, over real gRPC: in every mode with a target, greedy
output under a JSON schema, a regex or a Lark grammar equals `generate` with the same token mask as
a logits processor (fp32), whatever the draft proposed; sampled output always follows the grammar;
a verifier with another tokenizer, or none, refuses the session before any token is decided."""

from __future__ import annotations

import json
from functools import lru_cache

import pytest
import torch

from edgespec.client.edge_client import EdgeClient, ServerError
from edgespec.core.config import GenerationConfig, SamplingParams
from edgespec.core.grammar import Grammar
from edgespec.core.modes import Mode
from edgespec.decoding.grammar import GrammarMatcher, tokenizer_fingerprint
from edgespec.exits.heads import ExitHeads, ExitSpec
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.cloud_draft import CloudDraft
from edgespec.server.servicer import VerifierService
from tests.support.chat_tokenizer import chat_tokenizer
from tests.support.grammar_oracle import masked_generate
from tests.support.json_tokenizer import json_tokenizer
from tests.support.tiny_models import layer_skip_copy, tiny_model

NEW_TOKENS = 48
TARGET_MODES = [Mode.CLOUD_AR, Mode.SD, Mode.SD_EE, Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED, Mode.CLOUD_SD]
ACTION = {
    "type": "object",
    "properties": {
        "move": {"enum": ["left", "right", "stop"]},
        "fast": {"type": "boolean"},
        "steps": {"type": "integer"},
    },
    "required": ["move", "fast", "steps"],
    "additionalProperties": False,
}


@lru_cache(maxsize=None)
def tokenizer():  # type: ignore[no-untyped-def]
    return json_tokenizer()


EOS = tokenizer().eos_token_id
PROMPT = tokenizer().encode("go: ")


def grammar(kind: str, source: str) -> Grammar:
    return Grammar(kind, source, tokenizer_fingerprint(tokenizer()))


GRAMMARS = {
    "json_schema": grammar("json_schema", json.dumps(ACTION)),
    "json_object": grammar("json_schema", json.dumps({"type": "object"})),
    "regex": grammar("regex", r"(left|right) [0-9]{1,3}"),
    "lark": grammar("lark", 'start: "move " ("left" | "right") " " /[0-9]+/'),
}


@lru_cache(maxsize=None)
def target_model() -> torch.nn.Module:
    return tiny_model("qwen2", seed=0)


def layer_skip_draft() -> torch.nn.Module:
    return layer_skip_copy(tiny_model("qwen2", seed=0), keep=3)


def serve(tokenizer_on_server) -> RunningServer:  # type: ignore[no-untyped-def]
    model = tiny_model("qwen2", seed=0)
    exits = ExitHeads([ExitSpec(2), ExitSpec(3)], model.config.hidden_size)
    service = VerifierService(
        TargetRuntime(model, exits),
        tokenizer=tokenizer_on_server,
        eos_ids=frozenset({EOS}),
        cloud_draft=CloudDraft(layer_skip_draft()),
    )
    return RunningServer(service, ServerConfig(port=0))


@pytest.fixture(scope="module")
def address():
    server = serve(tokenizer())
    yield f"127.0.0.1:{server.port}"
    server.stop()


def client(address: str, drafts_under_the_mask: bool = True) -> EdgeClient:
    """With the tokenizer the draft drafts under the grammar (forced tokens free); without it it
    drafts freely and only the verifier masks: lossless either way."""
    edge_tokenizer = tokenizer() if drafts_under_the_mask else None
    return EdgeClient(address, DraftRuntime(layer_skip_draft()), tokenizer=edge_tokenizer)


def config(grammar: Grammar, **fields) -> GenerationConfig:  # type: ignore[no-untyped-def]
    defaults = {"max_new_tokens": NEW_TOKENS, "gamma": 3, "eos_ids": frozenset({EOS}), "grammar": grammar}
    return GenerationConfig(**{**defaults, **fields})


@pytest.mark.parametrize("masked_draft", [True, False], ids=["masked-draft", "free-draft"])
@pytest.mark.parametrize("name", sorted(GRAMMARS))
@pytest.mark.parametrize("mode", TARGET_MODES, ids=lambda m: m.value)
def test_greedy_constrained_output_equals_masked_generate(
    address: str, mode: Mode, name: str, masked_draft: bool
) -> None:
    expected = masked_generate(target_model(), tokenizer(), GRAMMARS[name], PROMPT, NEW_TOKENS, EOS)
    constrained = config(GRAMMARS[name], early_verdicts=mode.uses_exits)
    result = client(address, masked_draft).generate(PROMPT, mode, constrained)
    assert result.tokens == expected


@pytest.mark.parametrize("name", ["json_schema", "lark"])
def test_drafting_under_the_mask_is_accepted_more_often(address: str, name: str) -> None:
    """The draft proposes only valid tokens and the grammar's forced tokens cost no draft step."""
    rates = []
    for masked_draft in (False, True):
        result = client(address, masked_draft).generate(PROMPT, Mode.SD, config(GRAMMARS[name], draft_stop=0.0))
        rates.append(result.stats.acceptance_rate)
    assert rates[1] > rates[0]


def test_a_schema_output_is_valid_json_of_the_schema(address: str) -> None:
    result = client(address).generate(PROMPT, Mode.SD, config(GRAMMARS["json_schema"], max_new_tokens=200))
    assert result.tokens[-1] == EOS
    action = json.loads(tokenizer().decode(result.tokens, skip_special_tokens=True))
    assert set(action) == {"move", "fast", "steps"} and action["move"] in {"left", "right", "stop"}


@pytest.mark.parametrize("name", ["regex", "json_schema"])
@pytest.mark.parametrize("mode", [Mode.SD, Mode.SD_EE_PIPELINED, Mode.CLOUD_AR, Mode.CLOUD_SD], ids=lambda m: m.value)
def test_sampled_output_follows_the_grammar(address: str, mode: Mode, name: str) -> None:
    for seed in range(4):
        sampled = config(GRAMMARS[name], sampling=SamplingParams(temperature=1.5), seed=seed)
        tokens = client(address).generate(PROMPT, mode, sampled).tokens
        matcher = GrammarMatcher(GRAMMARS[name], tokenizer(), target_model().config.vocab_size, [EOS])
        matcher.advance(tokens)  # raises if any token breaks the grammar
        assert tokens[-1] == EOS or len(tokens) == NEW_TOKENS


def test_a_verifier_with_another_tokenizer_refuses_the_grammar() -> None:
    server = serve(chat_tokenizer())
    try:
        with pytest.raises(ServerError, match="not the target's"):
            client(f"127.0.0.1:{server.port}").generate(PROMPT, Mode.SD, config(GRAMMARS["regex"]))
    finally:
        server.stop()


def test_a_verifier_without_a_tokenizer_refuses_the_grammar() -> None:
    server = serve(None)
    try:
        with pytest.raises(ServerError, match="no tokenizer"):
            client(f"127.0.0.1:{server.port}").generate(PROMPT, Mode.CLOUD_AR, config(GRAMMARS["regex"]))
    finally:
        server.stop()


def test_edge_only_has_no_target_to_constrain(address: str) -> None:
    with pytest.raises(ValueError, match="edge-only"):
        client(address).generate(PROMPT, Mode.EDGE_ONLY, config(GRAMMARS["regex"]))


def test_the_in_process_engine_refuses_what_it_cannot_honour() -> None:
    from edgespec.drivers.local_engine import LocalEngine

    engine = LocalEngine(TargetRuntime(target_model()), DraftRuntime(layer_skip_draft()))
    with pytest.raises(ValueError, match="over the network"):
        engine.generate(PROMPT, Mode.SD, GenerationConfig(max_new_tokens=4, logprobs=1))
    # Grammars it applies (tests/drivers/test_local_engine_grammar.py), given a tokenizer to compile them with.
    with pytest.raises(ValueError, match="tokenizer"):
        engine.generate(PROMPT, Mode.SD, GenerationConfig(max_new_tokens=4, grammar=GRAMMARS["regex"]))
