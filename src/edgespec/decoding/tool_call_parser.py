"""The target's text, read back as content and tool calls, as it streams: the inverse of the tool
grammar (``tool_calls.py``), incremental so an API can stream a call's arguments as they come.

Feed text with ``push`` and end with ``finish``; each returns the events the new text completes:
``Content`` (text shown as the message's content), ``CallStarted`` (a call's name, once whole) and
``ArgumentsDelta`` (the next characters of its arguments' JSON, exactly as generated). Text that
could still begin ``<tool_call>``, and whitespace that would only separate content from a call, is
held back until it is known to be content. A text cut short (``max_tokens``) ends with whatever
was complete: a call whose name was whole keeps the arguments written so far.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from edgespec.decoding.tool_calls import CALL_CLOSE, CALL_OPEN

# What follows the opening tag up to the arguments' first character, in the template's layout.
_HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*')


@dataclass(frozen=True)
class Content:
    text: str


@dataclass(frozen=True)
class CallStarted:
    index: int  # of the call in this answer, from 0
    name: str


@dataclass(frozen=True)
class ArgumentsDelta:
    index: int
    text: str


ParsedEvent = Content | CallStarted | ArgumentsDelta


@dataclass
class ParsedCall:
    name: str
    arguments: str = ""


@dataclass
class ParsedText:
    """A whole answer: its content (None when it had none) and its calls."""

    content: str | None
    calls: list[ParsedCall] = field(default_factory=list)


class ToolCallParser:
    """States: ``text`` (content), ``header`` (after the opening tag, until the arguments start),
    ``arguments`` (inside the arguments object), ``closing`` (until the closing tag)."""

    def __init__(self) -> None:
        self._state = "text"
        self._buffer = ""  # text not yet turned into events
        self._calls = 0
        self._depth = 0  # of braces and brackets inside the arguments
        self._in_string = False
        self._escaped = False

    def push(self, text: str) -> list[ParsedEvent]:
        self._buffer += text
        events: list[ParsedEvent] = []
        while self._step(events):
            pass
        return events

    def finish(self) -> list[ParsedEvent]:
        """The events of what is left: held-back content is content after all."""
        events = self.push("")
        if self._state == "text" and self._buffer:
            events.append(Content(self._buffer))
        self._buffer = ""
        return events

    def _step(self, events: list[ParsedEvent]) -> bool:
        """Turn what the buffer allows into events; True when the state changed (step again)."""
        if self._state == "text":
            return self._text(events)
        if self._state == "header":
            return self._header(events)
        if self._state == "arguments":
            return self._arguments(events)
        end = self._buffer.find(CALL_CLOSE)
        if end < 0:
            return False
        self._buffer, self._state = self._buffer[end + len(CALL_CLOSE) :], "text"
        return True

    def _text(self, events: list[ParsedEvent]) -> bool:
        start = self._buffer.find(CALL_OPEN)
        if start >= 0:
            shown = self._buffer[:start].rstrip()  # the line break before a call is layout
            if shown:
                events.append(Content(shown))
            self._buffer, self._state = self._buffer[start + len(CALL_OPEN) :], "header"
            return True
        held = _held_back(self._buffer)
        if held < len(self._buffer):
            events.append(Content(self._buffer[: len(self._buffer) - held]))
            self._buffer = self._buffer[len(self._buffer) - held :]
        return False

    def _header(self, events: list[ParsedEvent]) -> bool:
        match = _HEADER.match(self._buffer)
        if match is None or match.end() == len(self._buffer):  # wait for the arguments' first character
            return False
        events.append(CallStarted(self._calls, json.loads(match.group(1))))
        self._buffer, self._state = self._buffer[match.end() :], "arguments"
        self._depth, self._in_string, self._escaped = 0, False, False
        return True

    def _arguments(self, events: list[ParsedEvent]) -> bool:
        for position, character in enumerate(self._buffer):
            if self._escaped:
                self._escaped = False
            elif self._in_string:
                self._escaped = character == "\\"
                self._in_string = character != '"'
            elif character == '"':
                self._in_string = True
            elif character in "{[":
                self._depth += 1
            elif character in "}]":
                self._depth -= 1
                if self._depth == 0:
                    events.append(ArgumentsDelta(self._calls, self._buffer[: position + 1]))
                    self._buffer, self._state = self._buffer[position + 1 :], "closing"
                    self._calls += 1
                    return True
        if self._buffer:
            events.append(ArgumentsDelta(self._calls, self._buffer))
            self._buffer = ""
        return False


def _held_back(text: str) -> int:
    """How many trailing characters of ``text`` may not be shown yet: a tail that could begin the
    opening tag, and the whitespace before it (layout, if a call follows)."""
    tail = next(
        (size for size in range(min(len(text), len(CALL_OPEN) - 1), 0, -1) if CALL_OPEN.startswith(text[-size:])), 0
    )
    body = text[: len(text) - tail]
    return tail + len(body) - len(body.rstrip())


def parse_tool_calls(text: str) -> ParsedText:
    """A whole answer's content and calls (what ``ToolCallParser`` streams, collected)."""
    parser = ToolCallParser()
    content: list[str] = []
    calls: list[ParsedCall] = []
    for event in [*parser.push(text), *parser.finish()]:
        if isinstance(event, Content):
            content.append(event.text)
        elif isinstance(event, CallStarted):
            calls.append(ParsedCall(event.name))
        else:
            calls[event.index].arguments += event.text
    return ParsedText("".join(content) or None, calls)
