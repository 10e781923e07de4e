"""Every `edgespec` command, nested ones included, answers --help in process and says what it does."""

from __future__ import annotations

import argparse

import pytest

from edgespec.cli import build_parser, main


def command_parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Each command's parser by its words on the command line (`models fetch`: ("models", "fetch"))."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[path + (name,)] = sub
                found.update(command_parsers(sub, path + (name,)))
    return found


COMMANDS = command_parsers(build_parser())


def test_the_commands_are_all_there() -> None:
    top = {path[0] for path in COMMANDS}
    assert top == {
        "models",
        "generate",
        "serve",
        "link",
        "edge-serve",
        "bench",
        "trace",
        "simulate",
        "train-exits",
        "eval-exits",
        "robot",
        "robot-reuse",
        "profile",
        "exit-hit-rate",
    }
    assert {("models", "list"), ("models", "fetch"), ("models", "path")} <= set(COMMANDS)


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_help_prints_the_commands_description(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    description = COMMANDS[path].description
    assert description and description.strip()
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: edgespec {' '.join(path)}")
    # argparse re-wraps the text (at spaces and after hyphens): compare it without whitespace.
    assert "".join(description.split()) in "".join(shown.split())
