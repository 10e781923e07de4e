"""The generated CLI reference (docs/hooks/cli_reference.py) lists every command, subcommand and
flag of `edgespec`, straight from the argparse parsers: nothing can be added to the CLI without
appearing in the docs."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from edgespec.cli import build_parser

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _load_hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cli_reference_hook", DOCS / "hooks" / "cli_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOOK = _load_hook()


def _commands(parser: argparse.ArgumentParser, name: str = "edgespec"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub_parser in action.choices.items():
                yield from _commands(sub_parser, f"{name} {sub_name}")


@pytest.fixture(scope="module")
def page() -> str:
    cli_page = (DOCS / "reference" / "cli.md").read_text()
    assert HOOK.MARKER in cli_page
    return HOOK.on_page_markdown(cli_page, page=None, config=None, files=None)


def test_every_command_and_subcommand_has_a_section(page: str) -> None:
    commands = [name for name, _ in _commands(build_parser())]
    assert len(commands) > 10
    for name in commands:
        assert f"`{name}`" in page, name


def test_every_flag_of_every_command_appears(page: str) -> None:
    checked = 0
    for name, parser in _commands(build_parser()):
        for action in parser._actions:
            if action.help is argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
                continue
            for option in action.option_strings:
                assert f"`{option}`" in page, f"{name}: {option}"
                checked += 1
    assert checked > 100


def test_every_usage_line_appears(page: str) -> None:
    for name, parser in _commands(build_parser()):
        first_line = HOOK._usage(parser).splitlines()[0]
        assert first_line in page, name


def test_a_page_without_the_marker_is_left_alone() -> None:
    text = "# Some page\n\nNo generated content here.\n"
    assert HOOK.on_page_markdown(text, page=None, config=None, files=None) == text


def test_help_text_is_escaped_but_code_spans_are_kept() -> None:
    assert HOOK._escape("a *b* `c_d` [e]") == "a \\*b\\* `c_d` \\[e\\]"
