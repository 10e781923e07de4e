"""Structured output through the official `openai` client against a real edge-serve and verifier
(tiny models, a tiny tokenizer that can spell JSON on both sides): ``parse(response_format=<pydantic
model>)`` returns a valid object equal to masked `generate` (greedy, fp32); json_object, streaming
and the regex/Lark extensions follow their grammar; bad schemas and grammars get OpenAI-shaped 400s."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Iterator, Literal

import openai
import pytest
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel

from edgespec.client.edge_client import ClientOptions
from edgespec.core.grammar import Grammar
from edgespec.core.modes import Mode
from edgespec.decoding.grammar import tokenizer_fingerprint
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from edgespec.openai_api.backend import BackendSettings, EdgeBackend
from edgespec.prompting import render_prompt
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.servicer import VerifierService
from tests.openai_api.test_openai_api import TARGET_NAME, EdgeServe, draft_model, target_model
from tests.support.grammar_oracle import masked_generate
from tests.support.json_tokenizer import json_tokenizer
from tests.support.tiny_models import tiny_model

MAX_TOKENS = 160


class Action(BaseModel):
    move: Literal["left", "right", "stop"]
    fast: bool


@lru_cache(maxsize=None)
def tokenizer() -> Any:
    return json_tokenizer()


EOS = tokenizer().eos_token_id


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    service = VerifierService(
        TargetRuntime(tiny_model("qwen2", seed=0)),
        tokenizer=tokenizer(),
        eos_ids=frozenset({EOS}),
        target_name=TARGET_NAME,
    )
    server = RunningServer(service, ServerConfig(port=0))
    yield f"127.0.0.1:{server.port}"
    server.stop()


def serve(address: str, mode: Mode) -> EdgeServe:
    settings = BackendSettings(address=address, mode=mode, options=ClientOptions(connect_timeout_s=5.0), gamma=3)
    backend = EdgeBackend(settings, tokenizer(), [DraftRuntime(draft_model())], fallback_eos_ids=frozenset({EOS}))
    return EdgeServe(backend)


@pytest.fixture(scope="module", params=[Mode.SD, Mode.SD_EE_PIPELINED, Mode.CLOUD_AR], ids=lambda mode: mode.value)
def edge(request: Any, address: str) -> Iterator[EdgeServe]:
    serve_ = serve(address, request.param)
    yield serve_
    serve_.stop()


def expected_text(content: str, kind: str, source: str) -> str:
    grammar = Grammar(kind, source, tokenizer_fingerprint(tokenizer()))
    prompt = render_prompt(tokenizer(), content)
    tokens = masked_generate(target_model(), tokenizer(), grammar, prompt, MAX_TOKENS, EOS)
    assert tokens[-1] == EOS, "the oracle did not finish the grammar: raise MAX_TOKENS"
    return tokenizer().decode(tokens, skip_special_tokens=True)


def ask(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def test_parse_returns_the_masked_generate_object(edge: EdgeServe) -> None:
    content = "which way"
    reply = edge.client().chat.completions.parse(
        model=TARGET_NAME,
        messages=ask(content),
        response_format=Action,
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    text = expected_text(content, "json_schema", json.dumps(to_strict_json_schema(Action)))
    assert reply.choices[0].message.content == text
    assert reply.choices[0].message.parsed == Action.model_validate_json(text)


def test_json_object_streams_a_json_object_equal_to_masked_generate(edge: EdgeServe) -> None:
    content = "an object"
    stream = edge.client().chat.completions.create(
        model=TARGET_NAME,
        messages=ask(content),
        response_format={"type": "json_object"},
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == expected_text(content, "json_schema", json.dumps({"type": "object"}))
    assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize(
    "response_format, kind, source",
    [
        ({"type": "regex", "pattern": "(left|right) [0-9]{1,3}"}, "regex", "(left|right) [0-9]{1,3}"),
        ({"type": "lark", "grammar": 'start: "go " ("up" | "down")'}, "lark", 'start: "go " ("up" | "down")'),
    ],
)
def test_the_regex_and_lark_extensions_equal_masked_generate(
    edge: EdgeServe, response_format: dict[str, str], kind: str, source: str
) -> None:
    reply = edge.client().chat.completions.create(
        model=TARGET_NAME,
        messages=ask("go"),
        max_tokens=MAX_TOKENS,
        temperature=0,
        extra_body={"response_format": response_format},
    )
    assert reply.choices[0].message.content == expected_text("go", kind, source)


@pytest.mark.parametrize(
    "response_format, param",
    [
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}, "response_format"),
        ({"type": "regex", "pattern": "(unclosed"}, "response_format"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "xml"}, "response_format.type"),
    ],
)
def test_bad_schemas_and_grammars_get_a_400(edge: EdgeServe, response_format: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        edge.client().chat.completions.create(
            model=TARGET_NAME,
            messages=ask("hi"),
            max_tokens=4,
            extra_body={"response_format": response_format},
        )
    assert caught.value.body["param"] == param and caught.value.body["type"] == "invalid_request_error"


def test_edge_only_refuses_a_grammar(address: str) -> None:
    serve_ = serve(address, Mode.EDGE_ONLY)
    try:
        with pytest.raises(openai.BadRequestError, match="edge-only"):
            serve_.client().chat.completions.create(
                model=TARGET_NAME,
                messages=ask("hi"),
                max_tokens=4,
                response_format={"type": "json_object"},
            )
    finally:
        serve_.stop()
