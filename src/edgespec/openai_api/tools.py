"""A request's ``tools`` and ``tool_choice`` as the grammar its generation runs under, checked at
the edge against the edge's tokenizer before it takes a slot: a model whose chat template cannot
carry tool calls, or a function schema the grammar engine refuses, is a 400 naming the parameter,
never a failed session."""

from __future__ import annotations

import asyncio

from edgespec.core.grammar import Grammar
from edgespec.core.modes import Mode
from edgespec.decoding.grammar import GrammarError
from edgespec.decoding.tool_calls import ToolsUnsupported, check_tool_schema, check_tool_support, tool_grammar
from edgespec.openai_api.backend import EdgeBackend
from edgespec.openai_api.errors import bad_request
from edgespec.openai_api.schemas import ChatCompletionRequest


def check_tools_supported(body: ChatCompletionRequest, backend: EdgeBackend) -> None:
    """A 400 naming the model when the request offers tools, or sends back calls or their results,
    and the model's chat template cannot render them (it would drop them silently)."""
    history = any(message.tool_calls or message.role == "tool" for message in body.messages)
    if not body.tools and not history:
        return
    try:
        check_tool_support(backend.tokenizer)
    except ToolsUnsupported as error:
        model = backend.model_id or body.model or "this model"
        message = f"model {model!r} cannot call tools here: {error}"
        raise bad_request(message, "tools" if body.tools else "messages", "unsupported_parameter") from None


async def request_tool_grammar(body: ChatCompletionRequest, backend: EdgeBackend) -> Grammar | None:
    """The grammar for the request's tool choice (None when it calls no tools)."""
    check_tools_supported(body, backend)
    if not body.calls_tools:
        return None
    if backend.settings.mode is Mode.EDGE_ONLY:
        raise bad_request("tools: a tool call's grammar constrains the target, and edge-only mode has none", "tools")
    assert body.tools is not None
    functions = [tool.as_function() for tool in body.tools]
    for index, function in enumerate(functions):
        try:
            await asyncio.to_thread(check_tool_schema, function, backend.tokenizer)
        except GrammarError as error:
            param = f"tools.{index}.function.parameters"
            raise bad_request(f"{param}: {error}", param, "invalid_value") from None
    parallel = body.parallel_tool_calls is not False
    eos = sorted(backend.eos_ids)
    try:
        return await asyncio.to_thread(tool_grammar, backend.tokenizer, functions, body.tool_choice_name, parallel, eos)
    except GrammarError as error:
        raise bad_request(f"tools: {error}", "tools", "invalid_value") from None
