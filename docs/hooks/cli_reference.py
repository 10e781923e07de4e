"""MkDocs hook: write the CLI reference from the `edgespec` argparse parsers at build time.

The page `reference/cli.md` holds a marker; this hook replaces it with every command's and
subcommand's usage, description and flags, read from `edgespec.cli.build_parser()`. Generating it
means the reference can never drift from the parsers, and `tests/docs/test_cli_reference.py` checks
that every flag of every command appears.
"""

from __future__ import annotations

import argparse
import html
import re
import textwrap
from typing import Iterator

MARKER = "<!-- cli-reference -->"
USAGE_WIDTH = 100


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (MkDocs' hook signature)
    if MARKER not in markdown:
        return markdown
    # Imported here so that a page without the marker never pays for loading the CLI.
    from edgespec.cli import build_parser

    return markdown.replace(MARKER, render_cli_reference(build_parser()))


def render_cli_reference(parser: argparse.ArgumentParser) -> str:
    """The whole command tree as Markdown: one section per command, subcommands nested below it."""
    sections = [_render_command(name, command, depth) for name, command, depth in _walk(parser, "edgespec", 0)]
    return "\n\n".join(sections) + "\n"


def _walk(parser: argparse.ArgumentParser, name: str, depth: int) -> Iterator[tuple[str, argparse.ArgumentParser, int]]:
    yield name, parser, depth
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub_parser in action.choices.items():
                yield from _walk(sub_parser, f"{name} {sub_name}", depth + 1)


def _render_command(name: str, parser: argparse.ArgumentParser, depth: int) -> str:
    heading = "#" * min(2 + depth, 4)
    lines = [f"{heading} `{name}`", "", "```text", _usage(parser).rstrip(), "```", ""]
    if parser.description:
        lines += [_escape(parser.description), ""]
    formatter = parser._get_formatter()
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if _documented(a)]
        if not actions:
            continue
        lines += [f"**{_escape(group.title or 'arguments')}**", ""]
        lines += [_render_action(action, formatter) for action in actions]
        lines.append("")
    if parser.epilog:
        lines += _render_epilog(parser.epilog)
    return "\n".join(lines).rstrip()


def _render_epilog(epilog: str) -> list[str]:
    # The examples are command lines: shown as a shell block, copied as written.
    title, _, body = epilog.partition("\n")
    if title == "examples:":
        return ["**examples**", "", "```sh", textwrap.dedent(body).strip(), "```", ""]
    return [_escape(epilog), ""]


def _usage(parser: argparse.ArgumentParser) -> str:
    # A fixed width, so the page does not depend on the terminal that built it.
    formatter = parser.formatter_class(prog=parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help()


def _documented(action: argparse.Action) -> bool:
    return action.help is not argparse.SUPPRESS and not isinstance(action, argparse._SubParsersAction)


def _render_action(action: argparse.Action, formatter: argparse.HelpFormatter) -> str:
    if action.option_strings:
        names = ", ".join(f"`{option}`" for option in action.option_strings)
        if action.nargs != 0:
            names += f" `{_metavar(action)}`"
    else:
        names = f"`{_metavar(action)}`"
    help_text = _escape(formatter._expand_help(action)) if action.help else ""
    default = _default(action)
    if default and "default" not in help_text:
        help_text = f"{help_text} (default: `{default}`)".lstrip()
    return f"- {names}" + (f": {help_text}" if help_text else "")


def _default(action: argparse.Action) -> str:
    """The default worth printing: not for switches, and not where there is none."""
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS) or isinstance(action.default, bool):
        return ""
    if isinstance(action.default, (list, tuple)):
        return ",".join(str(item) for item in action.default)
    return str(action.default)


def _metavar(action: argparse.Action) -> str:
    if action.metavar is not None:
        return action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar)
    if action.choices is not None:
        return "{" + ",".join(str(choice) for choice in action.choices) + "}"
    return action.dest.upper() if action.option_strings else action.dest


def _escape(text: str) -> str:
    """Help text as Markdown that renders literally: collapse argparse's wrapping, escape markup."""
    text = re.sub(r"\s+", " ", text).strip()
    # `code` spans render literally already; escaping inside them would show the backslashes.
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(part if part.startswith("`") else _escape_prose(part) for part in parts)


def _escape_prose(text: str) -> str:
    text = html.escape(text, quote=False)
    return re.sub(r"([\\*_\[\]|])", r"\\\1", text)
