"""The tool grammar and its reader, without HTTP: what each tool choice lets the target write (a
matcher walked over texts token by token), what it forces, which templates and schemas it refuses,
and that the parser reads a streamed answer exactly as the whole one, however the text is cut."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import pytest

from edgespec.decoding.grammar import GrammarError, GrammarMatcher
from edgespec.decoding.tool_call_parser import (
    ArgumentsDelta,
    CallStarted,
    Content,
    ParsedCall,
    ParsedText,
    ToolCallParser,
    parse_tool_calls,
)
from edgespec.decoding.tool_calls import ToolFunction, ToolsUnsupported, tool_grammar
from tests.support.chat_tokenizer import chat_tokenizer
from tests.support.tiny_models import VOCAB
from tests.support.tool_tokenizer import tool_tokenizer

WEATHER = ToolFunction(
    "get_weather",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False},
)
CLOCK = ToolFunction("now")
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "oslo"}}\n</tool_call>'
CLOCK_CALL = '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>'


@lru_cache(maxsize=None)
def tokenizer() -> Any:
    return tool_tokenizer()


EOS = tokenizer().eos_token_id


def allows(choice: str, text: str, parallel: bool = True) -> bool:
    """Whether the grammar lets the target write ``text`` and then end."""
    grammar = tool_grammar(tokenizer(), [WEATHER, CLOCK], choice, parallel, eos_ids=[EOS])
    assert grammar is not None
    matcher = GrammarMatcher(grammar, tokenizer(), VOCAB, [EOS])
    for token in [*tokenizer().encode(text), EOS]:
        if not matcher.mask()[token]:
            return False
        matcher.advance([token])
    return True


@pytest.mark.parametrize(
    "text, auto, required",
    [
        ("", True, False),
        ("it is sunny", True, False),
        (CALL, True, True),
        (f"let me see\n{CALL}", True, False),
        (f"{CALL}\n{CLOCK_CALL}", True, True),
        ('<tool_call>\n{"name": "get_weather", "arguments": {"town": "oslo"}}\n</tool_call>', False, False),
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city":"oslo"}}\n</tool_call>', False, False),
        ('<tool_call>\n{"name": "rm", "arguments": {}}\n</tool_call>', False, False),
        (f"{CALL} and more", False, False),
    ],
)
def test_auto_allows_text_or_valid_calls_and_required_only_calls(text: str, auto: bool, required: bool) -> None:
    assert allows("auto", text) is auto
    assert allows("required", text) is required


def test_one_call_only_without_parallel_calls() -> None:
    assert allows("required", CALL, parallel=False)
    assert not allows("required", f"{CALL}\n{CLOCK_CALL}", parallel=False)


def test_a_named_choice_allows_that_function_only_and_forces_its_header() -> None:
    assert allows("get_weather", CALL) and not allows("get_weather", CLOCK_CALL)
    grammar = tool_grammar(tokenizer(), [WEATHER, CLOCK], "get_weather", eos_ids=[EOS])
    assert grammar is not None
    forced = tokenizer().decode(GrammarMatcher(grammar, tokenizer(), VOCAB, [EOS]).forced())
    assert forced.startswith('<tool_call>\n{"name": "get_weather", "arguments": {"city":')
    # A function without parameters is all forced: the whole call costs no draft step.
    grammar = tool_grammar(tokenizer(), [WEATHER, CLOCK], "now", eos_ids=[EOS])
    assert grammar is not None
    assert tokenizer().decode(GrammarMatcher(grammar, tokenizer(), VOCAB, [EOS]).forced()) == CLOCK_CALL


def test_none_has_no_grammar() -> None:
    assert tool_grammar(tokenizer(), [WEATHER], "none") is None


def test_refusals_say_why() -> None:
    with pytest.raises(ToolsUnsupported, match="does not render tools"):
        tool_grammar(chat_tokenizer(), [WEATHER])
    with pytest.raises(GrammarError, match="'broken'"):
        tool_grammar(tokenizer(), [ToolFunction("broken", {"type": "bogus"})])
    with pytest.raises(ValueError, match="no function named 'rm'"):
        tool_grammar(tokenizer(), [WEATHER], "rm")


# Braces, brackets, an escaped backslash and an escaped quote inside a string argument.
TRICKY_ARGUMENTS = r'{"city": "os}lo \\\" [x"}'
ANSWER = "let me see\n" + CALL.replace('{"city": "oslo"}', TRICKY_ARGUMENTS) + "\n" + CLOCK_CALL


def test_the_parser_reads_content_and_calls() -> None:
    assert json.loads(TRICKY_ARGUMENTS) == {"city": 'os}lo \\" [x'}
    assert parse_tool_calls(ANSWER) == ParsedText(
        "let me see", [ParsedCall("get_weather", TRICKY_ARGUMENTS), ParsedCall("now", "{}")]
    )
    assert parse_tool_calls("just text <tool or not\n") == ParsedText("just text <tool or not\n")
    assert parse_tool_calls("") == ParsedText(None)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 13])
def test_a_streamed_answer_reads_as_the_whole_one(size: int) -> None:
    parser = ToolCallParser()
    events = [event for start in range(0, len(ANSWER), size) for event in parser.push(ANSWER[start : start + size])]
    events += parser.finish()
    whole = parse_tool_calls(ANSWER)
    assert "".join(event.text for event in events if isinstance(event, Content)) == whole.content
    assert [event.name for event in events if isinstance(event, CallStarted)] == [call.name for call in whole.calls]
    for index, call in enumerate(whole.calls):
        arguments = "".join(e.text for e in events if isinstance(e, ArgumentsDelta) and e.index == index)
        assert arguments == call.arguments
    # No content is shown before it is known not to begin a call.
    assert not any(isinstance(event, Content) and "<" in event.text for event in events)


def test_a_call_cut_short_keeps_what_was_written() -> None:
    assert parse_tool_calls(CALL[: CALL.index("ci") + 2]) == ParsedText(None, [ParsedCall("get_weather", '{"ci')])
    assert parse_tool_calls(CALL[:20]) == ParsedText(None, [])
