"""Tool calls as a grammar: what the target may write when a request offers tools, in the model's
own tool-call format, so a call's arguments follow that tool's JSON schema by construction.

The format is the one Qwen2.5 (and the Hermes models before it) are trained on, rendered by their
chat template: each call is ``<tool_call>\\n{"name": NAME, "arguments": ARGS}\\n</tool_call>``,
several calls one per line, the tags single tokens of the vocabulary. The grammar for a choice:

- ``auto``: free text (never spelling the opening tag), or optional text followed by calls;
- ``required``: one call or more, nothing else; a named function: exactly one call of it;
- ``none``: no grammar at all (free text, the tools still shown to the model by its template).

A call's JSON is written with the separators the template's ``tojson`` uses (``", "`` and ``": "``),
so the target continues the text in the shape it saw in training, and the forced parts (the tags,
``{"name": "``, a named call's whole header) are single continuations the edge appends for free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from edgespec.core.grammar import Grammar
from edgespec.decoding.grammar import GrammarError, check_grammar, tokenizer_fingerprint

TOOL_CHOICES = ("auto", "required", "none")
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
# The template's ``tojson``: Python's json.dumps separators, no free whitespace.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# A function with no ``parameters`` takes none: its arguments are ``{}``.
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


class ToolsUnsupported(ValueError):
    """The model's chat template or tokenizer cannot carry tool calls in a format edgespec knows."""


@dataclass(frozen=True)
class ToolFunction:
    """A function the model may call: its name and the JSON schema of its arguments."""

    name: str
    parameters: dict[str, Any] | None = None

    @property
    def schema(self) -> dict[str, Any]:
        return self.parameters if self.parameters else NO_PARAMETERS


def check_tool_support(tokenizer: Any) -> None:
    """Raise ToolsUnsupported, saying why, unless the tokenizer's chat template renders ``tools`` and
    its model writes calls between ``<tool_call>`` tags that are single tokens."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        raise ToolsUnsupported("it has no chat template")
    if "tools" not in _template_variables(template):
        raise ToolsUnsupported("its chat template does not render tools")
    if CALL_OPEN not in template:
        raise ToolsUnsupported(f"its chat template does not use the {CALL_OPEN} format edgespec reads")
    added = tokenizer.get_added_vocab()
    missing = [tag for tag in (CALL_OPEN, CALL_CLOSE) if tag not in added]
    if missing:
        raise ToolsUnsupported(f"its tokenizer has no single token for {' and '.join(missing)}")


def _template_variables(template: str) -> set[str]:
    from jinja2 import Environment, TemplateSyntaxError, meta

    try:
        return set(meta.find_undeclared_variables(Environment().parse(template)))
    except TemplateSyntaxError:  # tags of an extension (transformers adds some): look at the text
        return {"tools"} if "tools" in template else set()


def tool_call_lark(functions: Sequence[ToolFunction], choice: str = "auto", parallel: bool = True) -> str | None:
    """The Lark grammar (llguidance's dialect) for a tool choice: ``auto``, ``required``, ``none``
    (None: no grammar) or the name of one of ``functions`` (exactly one call of it)."""
    if choice == "none":
        return None
    if not functions:
        raise ValueError("a tool choice needs at least one function")
    names = [function.name for function in functions]
    if choice not in TOOL_CHOICES and choice not in names:
        raise ValueError(f"no function named {choice!r} among the tools ({', '.join(names)})")
    if choice in TOOL_CHOICES:
        rules = [_call_rule(index, function) for index, function in enumerate(functions)]
        rules.append("call: " + " | ".join(f"call_{index}" for index in range(len(functions))))
        calls = 'call ("\\n" call)*' if parallel else "call"
    else:
        rules, calls = [_call_rule(0, functions[names.index(choice)])], "call_0"
    if choice == "auto":
        # Any answer, an empty one too; text may not spell the opening tag, so a call starts only as
        # the tag's own token, and from there the grammar holds it to a tool's schema.
        start = [f"start: TEXT? ({calls})?", f"TEXT: /(?s:.+)/ & ~/(?s:.*){CALL_OPEN}(?s:.*)/"]
    else:
        start = [f"start: {calls}"]
    return "\n".join([*start, *rules]) + "\n"


def _call_rule(index: int, function: ToolFunction) -> str:
    header = json.dumps(f'\n{{"name": {json.dumps(function.name)}, "arguments": ')
    arguments = json.dumps({**function.schema, "x-guidance": JSON_LAYOUT})
    return f'call_{index}: {CALL_OPEN} {header} %json {arguments} "}}\\n" {CALL_CLOSE}'


def check_tool_schema(function: ToolFunction, tokenizer: Any) -> None:
    """GrammarError, saying why, when ``function``'s parameters are not a JSON schema the grammar
    engine can hold arguments to."""
    if not isinstance(function.parameters or {}, dict):
        raise GrammarError("parameters must be a JSON schema object")
    source = json.dumps({**function.schema, "x-guidance": JSON_LAYOUT})
    check_grammar(Grammar("json_schema", source), tokenizer)


def tool_grammar(
    tokenizer: Any,
    functions: Sequence[ToolFunction],
    choice: str = "auto",
    parallel: bool = True,
    eos_ids: Sequence[int] = (),
) -> Grammar | None:
    """The grammar a generation runs under when ``functions`` are offered with ``choice`` (None for
    ``none``), checked against ``tokenizer``: ToolsUnsupported when its template cannot carry tool
    calls, GrammarError naming the function whose schema does not compile, ValueError for a choice
    that names no function."""
    check_tool_support(tokenizer)
    for function in functions:
        try:
            check_tool_schema(function, tokenizer)
        except GrammarError as error:
            raise GrammarError(f"function {function.name!r}: {error}") from None
    source = tool_call_lark(functions, choice, parallel)
    if source is None:
        return None
    grammar = Grammar("lark", source, tokenizer_fingerprint(tokenizer))
    check_grammar(grammar, tokenizer, eos_ids)
    return grammar
