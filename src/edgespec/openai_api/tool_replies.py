"""A tool-calling answer in OpenAI's shape: the target's text read back (``ToolCallParser``) as a
message's ``content`` and ``tool_calls``, whole or as stream deltas, with ``finish_reason``
``tool_calls`` when the answer ended after calling.

A stream names each call in its first delta (index, id, type, name, and the arguments' first
characters when they came with it) and sends the rest of its arguments in the deltas after, as
the text arrives; text held back (what could still begin a
call) waits, and so do the log-probabilities of its tokens, for the next delta that shows it."""

from __future__ import annotations

import secrets

from edgespec.core.logprobs import TokenLogprob
from edgespec.decoding.tool_call_parser import (
    ArgumentsDelta,
    CallStarted,
    Content,
    ParsedEvent,
    ToolCallParser,
    parse_tool_calls,
)
from edgespec.openai_api.schemas import ChatDelta, ChatMessageOut
from edgespec.openai_api.tool_schemas import FunctionCall, FunctionCallDelta, ToolCall, ToolCallDelta


def call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def finish_reason(reason: str, calls: int) -> str:
    """An answer that ended (not cut at max_tokens) after calling tools finished to call them."""
    return "tool_calls" if calls and reason == "stop" else reason


def chat_message(text: str, reason: str, calls_tools: bool) -> tuple[ChatMessageOut, str]:
    """A whole answer as a message and its finish reason; read back as content and calls when the
    request let it call tools."""
    if not calls_tools:
        return ChatMessageOut(content=text), reason
    message, calls = tool_message(text)
    return message, finish_reason(reason, calls)


def tool_message(text: str) -> tuple[ChatMessageOut, int]:
    """A whole answer as a message, and how many calls it made."""
    parsed = parse_tool_calls(text)
    calls = [
        ToolCall(id=call_id(), function=FunctionCall(name=call.name, arguments=call.arguments)) for call in parsed.calls
    ]
    return ChatMessageOut(content=parsed.content, tool_calls=calls or None), len(calls)


class ToolStream:
    """Each choice's text, as it streams, turned into chat deltas."""

    def __init__(self, n: int) -> None:
        self._parsers = [ToolCallParser() for _ in range(n)]
        self._calls = [0] * n
        self._unshown: list[list[TokenLogprob]] = [[] for _ in range(n)]  # log-probabilities waiting for text

    def text(
        self, index: int, text: str, logprobs: tuple[TokenLogprob, ...]
    ) -> tuple[ChatDelta, tuple[TokenLogprob, ...]] | None:
        """The delta for the next text of choice ``index``, with the log-probabilities it shows
        (None while everything is held back)."""
        self._unshown[index].extend(logprobs)
        return self._delta(index, self._parsers[index].push(text), final=False)

    def final(self, index: int, logprobs: tuple[TokenLogprob, ...]) -> tuple[ChatDelta, tuple[TokenLogprob, ...]]:
        """The last delta of choice ``index``: whatever was held back."""
        self._unshown[index].extend(logprobs)
        shown = self._delta(index, self._parsers[index].finish(), final=True)
        assert shown is not None
        return shown

    def finish_reason(self, index: int, reason: str) -> str:
        return finish_reason(reason, self._calls[index])

    def _delta(
        self, index: int, events: list[ParsedEvent], final: bool
    ) -> tuple[ChatDelta, tuple[TokenLogprob, ...]] | None:
        if not events and not final:
            return None
        content = "".join(event.text for event in events if isinstance(event, Content))
        calls: dict[int, ToolCallDelta] = {}  # one entry per call, as OpenAI's deltas have it
        for event in events:
            if isinstance(event, CallStarted):
                self._calls[index] += 1
                function = FunctionCallDelta(name=event.name, arguments="")
                calls[event.index] = ToolCallDelta(index=event.index, id=call_id(), type="function", function=function)
            elif isinstance(event, ArgumentsDelta):
                entry = calls.setdefault(event.index, ToolCallDelta(index=event.index, function=FunctionCallDelta()))
                entry.function.arguments = (entry.function.arguments or "") + event.text
        shown, self._unshown[index] = tuple(self._unshown[index]), []
        return ChatDelta(content=content or None, tool_calls=list(calls.values()) or None), shown
