"""Every `edgespec` command and subcommand helps itself: `--help` says in one line what it is for and
ends with examples, and every example is a command line the real parser accepts."""

from __future__ import annotations

import argparse
import shlex

import pytest

from edgespec.cli import build_parser, main
from edgespec.cli.examples import EXAMPLES
from tests.cli.test_cli_help import COMMANDS

ALL_COMMANDS = {(): build_parser(), **COMMANDS}


def one_line_purposes(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], str]:
    """What each command's parent lists beside its name (`edgespec --help`: `serve  Host the target ...`)."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                found[path + (choice.dest,)] = choice.help or ""
                found.update(one_line_purposes(action.choices[choice.dest], path + (choice.dest,)))
    return found


def test_every_command_has_examples_and_no_example_names_a_missing_command() -> None:
    assert set(EXAMPLES) == set(ALL_COMMANDS)


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_every_command_has_a_one_line_purpose(path: tuple[str, ...]) -> None:
    purpose = one_line_purposes(build_parser())[path]
    assert purpose.strip(), path
    assert "\n" not in purpose.strip()


@pytest.mark.parametrize("path", sorted(ALL_COMMANDS), ids=lambda path: " ".join(path) or "edgespec")
def test_help_ends_with_examples_as_written(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    examples = shown[shown.index("\nexamples:\n") :].splitlines()[2:]
    # One example per line, unwrapped, whatever the terminal's width.
    assert [line.strip() for line in examples if line.strip()] == list(EXAMPLES[path])


@pytest.mark.parametrize("path", sorted(ALL_COMMANDS), ids=lambda path: " ".join(path) or "edgespec")
def test_every_example_parses_as_the_command_it_illustrates(path: tuple[str, ...]) -> None:
    for example in EXAMPLES[path]:
        words = shlex.split(example)
        assert words[0] == "edgespec"
        assert tuple(words[1 : 1 + len(path)]) == path, example
        args = build_parser().parse_args(words[1:])
        assert callable(args.handler), example
