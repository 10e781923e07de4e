"""Tool calls through the official `openai` client against a real edge-serve and verifier (tiny
models; a tiny tokenizer with Qwen2.5's chat template and ``<tool_call>`` tokens on both sides).

A call's text is the target's own decoding under the tool grammar: each answer equals masked
`generate` (greedy, fp32) with the same grammar, read back into ``tool_calls``; a named or required
call's arguments validate against the tool's schema; streams carry calls as OpenAI's deltas; a
call → result → answer loop completes, streaming and not; bad tools and choices get OpenAI-shaped
400s. Tiny random models write garbage, so ``auto`` is checked for losslessness and shape only."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Iterator, Literal

import openai
import pytest
from pydantic import BaseModel, Field

from edgespec.client.edge_client import ClientOptions
from edgespec.core.modes import Mode
from edgespec.decoding.tool_call_parser import ParsedText, parse_tool_calls
from edgespec.decoding.tool_calls import ToolFunction, tool_grammar
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from edgespec.openai_api.backend import BackendSettings, EdgeBackend
from edgespec.prompting import render_prompt
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.servicer import VerifierService
from tests.openai_api.test_openai_api import TARGET_NAME, EdgeServe, Verifier, draft_model, edge_backend, target_model
from tests.support.grammar_oracle import masked_generate
from tests.support.tiny_models import greedy_reference, tiny_model
from tests.support.tool_tokenizer import tool_tokenizer

MAX_TOKENS = 120


class GetWeather(BaseModel):
    # Bounded, so a tiny model's call ends inside max_tokens.
    city: str = Field(max_length=10)
    unit: Literal["c", "f"]
    days: int = Field(ge=1, le=14)


WEATHER = openai.pydantic_function_tool(GetWeather, name="get_weather", description="the forecast")
CLOCK = {"type": "function", "function": {"name": "now", "description": "the time"}}
TOOLS: list[Any] = [WEATHER, CLOCK]


@lru_cache(maxsize=None)
def tokenizer() -> Any:
    return tool_tokenizer()


EOS = tokenizer().eos_token_id


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    model = tiny_model("qwen2", seed=0)
    model.config.max_position_embeddings = 1024  # tools make long prompts; the weights are the oracle's
    service = VerifierService(
        TargetRuntime(model),
        tokenizer=tokenizer(),
        eos_ids=frozenset({EOS}),
        target_name=TARGET_NAME,
    )
    server = RunningServer(service, ServerConfig(port=0))
    yield f"127.0.0.1:{server.port}"
    server.stop()


def serve(address: str, mode: Mode) -> EdgeServe:
    settings = BackendSettings(address=address, mode=mode, options=ClientOptions(connect_timeout_s=5.0), gamma=3)
    drafts = [DraftRuntime(draft_model()) for _ in range(2)]
    return EdgeServe(EdgeBackend(settings, tokenizer(), drafts, fallback_eos_ids=frozenset({EOS})))


@pytest.fixture(scope="module", params=[Mode.SD, Mode.SD_EE_PIPELINED, Mode.CLOUD_AR], ids=lambda mode: mode.value)
def edge(request: Any, address: str) -> Iterator[EdgeServe]:
    serve_ = serve(address, request.param)
    yield serve_
    serve_.stop()


def functions(tools: list[Any]) -> list[ToolFunction]:
    return [ToolFunction(tool["function"]["name"], tool["function"].get("parameters")) for tool in tools]


def expected(messages: list[dict[str, Any]], tools: list[Any], choice: str) -> tuple[ParsedText, bool]:
    """The oracle: masked `generate` under the tool grammar (plain `generate` for ``none``), on the
    prompt the template renders with the tools; its text read back, and whether it ended at EOS."""
    prompt = render_prompt(tokenizer(), messages, tools=tools)
    grammar = tool_grammar(tokenizer(), functions(tools), choice, eos_ids=[EOS])
    if grammar is None:
        tokens = greedy_reference(target_model(), prompt, MAX_TOKENS, eos=EOS)
    else:
        tokens = masked_generate(target_model(), tokenizer(), grammar, prompt, MAX_TOKENS, EOS)
    return parse_tool_calls(tokenizer().decode(tokens, skip_special_tokens=True)), tokens[-1] == EOS


def calls_of(message: Any) -> list[tuple[str, str]]:
    return [(call.function.name, call.function.arguments) for call in message.tool_calls or []]


def ask(content: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


def create(edge: EdgeServe, messages: list[dict[str, Any]], **options: Any) -> Any:
    return edge.client().chat.completions.create(
        model=TARGET_NAME, messages=messages, tools=TOOLS, max_tokens=MAX_TOKENS, temperature=0, **options
    )


# ------------------------------------------------------------------ answers equal masked generate


def test_a_named_call_equals_masked_generate_and_follows_the_schema(edge: EdgeServe) -> None:
    content = "weather in oslo"
    reply = edge.client().chat.completions.parse(
        model=TARGET_NAME,
        messages=ask(content),
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    oracle, ended = expected(ask(content), [WEATHER], "get_weather")
    assert ended, "the oracle did not finish the call: raise MAX_TOKENS"
    message = reply.choices[0].message
    assert message.content is None and reply.choices[0].finish_reason == "tool_calls"
    assert calls_of(message) == [(call.name, call.arguments) for call in oracle.calls]
    (call,) = message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.parsed_arguments == GetWeather.model_validate_json(call.function.arguments)


@pytest.mark.parametrize("parallel", [True, False])
def test_required_calls_equal_masked_generate(edge: EdgeServe, parallel: bool) -> None:
    content = "what now"
    reply = create(edge, ask(content), tool_choice="required", parallel_tool_calls=parallel)
    grammar = tool_grammar(tokenizer(), functions(TOOLS), "required", parallel, eos_ids=[EOS])
    assert grammar is not None
    prompt = render_prompt(tokenizer(), ask(content), tools=TOOLS)
    tokens = masked_generate(target_model(), tokenizer(), grammar, prompt, MAX_TOKENS, EOS)
    oracle = parse_tool_calls(tokenizer().decode(tokens, skip_special_tokens=True))
    message = reply.choices[0].message
    assert calls_of(message) == [(call.name, call.arguments) for call in oracle.calls]
    assert oracle.calls and message.content is None and (parallel or len(oracle.calls) == 1)
    for name, arguments in calls_of(message):
        if tokens[-1] == EOS and name == "get_weather":
            GetWeather.model_validate_json(arguments)
        elif tokens[-1] == EOS:
            assert json.loads(arguments) == {}


@pytest.mark.parametrize("content", ["hi there", "call it", "weather"])
def test_auto_equals_masked_generate(edge: EdgeServe, content: str) -> None:
    reply = create(edge, ask(content), tool_choice="auto")
    oracle, ended = expected(ask(content), TOOLS, "auto")
    message = reply.choices[0].message
    assert message.content == oracle.content
    assert calls_of(message) == [(call.name, call.arguments) for call in oracle.calls]
    reason = ("tool_calls" if oracle.calls else "stop") if ended else "length"
    assert reply.choices[0].finish_reason == reason


def test_tool_choice_none_shows_the_tools_and_answers_in_text(edge: EdgeServe) -> None:
    reply = create(edge, ask("hello"), tool_choice="none")
    oracle, _ = expected(ask("hello"), TOOLS, "none")
    assert reply.choices[0].message.content == (oracle.content or "") and reply.choices[0].message.tool_calls is None


# ------------------------------------------------------------------ streaming


def test_streamed_calls_arrive_as_openai_deltas_per_choice(edge: EdgeServe) -> None:
    content = "what now"
    stream = create(edge, ask(content), tool_choice="required", n=2, stream=True)
    deltas: dict[int, list[Any]] = {0: [], 1: []}
    reasons: dict[int, str] = {}
    for chunk in stream:
        for choice in chunk.choices:
            deltas[choice.index].extend(choice.delta.tool_calls or [])
            assert not choice.delta.content
            if choice.finish_reason:
                reasons[choice.index] = choice.finish_reason
    whole = create(edge, ask(content), tool_choice="required")
    for index in (0, 1):
        calls: list[list[str]] = []
        for delta in deltas[index]:
            if delta.id is not None:  # a call's first delta names it (its arguments may begin there)
                assert delta.type == "function" and delta.function.name and delta.index == len(calls)
                calls.append([delta.function.name, delta.function.arguments])
            else:
                assert delta.type is None and delta.function.name is None and delta.index == len(calls) - 1
                calls[-1][1] += delta.function.arguments
        assert [tuple(call) for call in calls] == calls_of(whole.choices[0].message)
        assert reasons[index] == whole.choices[0].finish_reason


def test_auto_streams_what_it_answers_whole(edge: EdgeServe) -> None:
    client = edge.client()
    options: dict[str, Any] = dict(model=TARGET_NAME, messages=ask("call it"), tools=TOOLS, max_tokens=MAX_TOKENS)
    with client.chat.completions.stream(**options, temperature=0) as stream:
        streamed = stream.get_final_completion()
    whole = client.chat.completions.create(**options, temperature=0)
    assert streamed.choices[0].message.content == whole.choices[0].message.content
    assert calls_of(streamed.choices[0].message) == calls_of(whole.choices[0].message)
    assert streamed.choices[0].finish_reason == whole.choices[0].finish_reason


# ------------------------------------------------------------------ the loop: call, result, answer


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_tool_loop_completes(edge: EdgeServe, stream: bool) -> None:
    client = edge.client()
    messages: list[dict[str, Any]] = ask("weather in oslo")
    first = client.chat.completions.create(
        model=TARGET_NAME, messages=messages, tools=TOOLS, tool_choice="required", max_tokens=MAX_TOKENS, temperature=0
    )
    call = first.choices[0].message.tool_calls[0]
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"temp": 3}'})
    options: dict[str, Any] = dict(model=TARGET_NAME, messages=messages, tools=TOOLS, tool_choice="auto")
    if stream:
        with client.chat.completions.stream(**options, max_tokens=MAX_TOKENS, temperature=0) as events:
            answer = events.get_final_completion().choices[0].message.content
    else:
        answer = (
            client.chat.completions.create(**options, max_tokens=MAX_TOKENS, temperature=0).choices[0].message.content
        )
    # The template saw the call (arguments as an object) and its result on the next turn.
    history = [
        messages[0],
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                dict(
                    call.model_dump(),
                    function={"name": call.function.name, "arguments": json.loads(call.function.arguments)},
                )
            ],
        },
        {"role": "tool", "content": '{"temp": 3}', "tool_call_id": call.id},
    ]
    rendered = tokenizer().apply_chat_template(history, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert '<tool_response>\n{"temp": 3}\n</tool_response>' in rendered and call.function.arguments in rendered
    oracle, _ = expected(history, TOOLS, "auto")
    assert oracle.content and not oracle.calls, "the oracle does not answer in text here: change the tool result"
    assert answer == oracle.content


# ------------------------------------------------------------------ refusals in OpenAI's shape


@pytest.mark.parametrize(
    "options, param",
    [
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "bogus"}}}]},
            "tools.0.function.parameters",
        ),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools.0.function.name"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "missing"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [CLOCK, CLOCK]}, "tools"),
        ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_bad_tools_and_choices_get_a_400(edge: EdgeServe, options: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        edge.client().chat.completions.create(model=TARGET_NAME, messages=ask("hi"), max_tokens=4, **options)
    assert caught.value.body["param"] == param and caught.value.body["type"] == "invalid_request_error"
    assert caught.value.body["message"]


def test_bad_tool_messages_get_a_400(edge: EdgeServe) -> None:
    broken_call = {"id": "call_1", "type": "function", "function": {"name": "now", "arguments": "{not json"}}
    for message, param in [
        ({"role": "tool", "content": "21"}, "messages.1"),
        ({"role": "assistant", "tool_calls": [broken_call]}, "messages.1.tool_calls.0.function"),
    ]:
        with pytest.raises(openai.BadRequestError) as caught:
            create(edge, [*ask("hi"), message])
        assert caught.value.body["param"] == param


def test_a_model_without_a_tool_template_gets_a_400_naming_it(verifier: Verifier) -> None:
    serve_ = EdgeServe(edge_backend(verifier.address, slots=1))
    try:
        with pytest.raises(openai.BadRequestError, match=f"model '{TARGET_NAME}' cannot call tools") as caught:
            serve_.client().chat.completions.create(model="x", messages=ask("hi"), tools=TOOLS, max_tokens=4)
        assert caught.value.body["param"] == "tools" and caught.value.body["code"] == "unsupported_parameter"
    finally:
        serve_.stop()


def test_sampled_calls_follow_the_schema_and_repeat_with_a_seed(edge: EdgeServe) -> None:
    options: dict[str, Any] = dict(tool_choice="required", parallel_tool_calls=False, n=2, seed=7, temperature=1.0)
    replies = [
        edge.client().chat.completions.create(
            model=TARGET_NAME, messages=ask("weather"), tools=TOOLS, max_tokens=MAX_TOKENS, **options
        )
        for _ in range(2)
    ]
    assert [calls_of(c.message) for c in replies[0].choices] == [calls_of(c.message) for c in replies[1].choices]
    for choice in replies[0].choices:
        ((name, arguments),) = calls_of(choice.message)
        assert choice.finish_reason == "tool_calls"
        if name == "get_weather":
            GetWeather.model_validate_json(arguments)
        else:
            assert name == "now" and json.loads(arguments) == {}
