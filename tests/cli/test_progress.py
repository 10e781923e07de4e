"""Long commands show progress on a terminal and write nothing of it into logs."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import pytest

from edgespec.cli.progress import progress

SRC = Path(__file__).resolve().parents[2] / "src" / "edgespec"
# The commands that run for minutes: model fetch and conversion, traces, the benchmark (and its
# capacity sweeps), simulator sweeps, cost profiles. Exit training draws through the library's bar.
LONG_COMMANDS = ("models.py", "trace.py", "bench.py", "simulate.py", "profile.py")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_is_silent_when_stderr_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    assert list(progress(range(5), desc="tracing", unit="prompt")) == [0, 1, 2, 3, 4]
    assert log.getvalue() == ""


def test_the_bar_is_drawn_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert list(progress(range(5), desc="tracing", unit="prompt")) == [0, 1, 2, 3, 4]
    assert "tracing" in terminal.getvalue()
    assert "/5" in terminal.getvalue()


def test_every_tqdm_bar_in_the_package_decides_whether_to_draw() -> None:
    bars = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "tqdm":
                bars.append(path.name)
                assert any(keyword.arg == "disable" for keyword in node.keywords), path
    assert len(bars) >= 4


@pytest.mark.parametrize("module", LONG_COMMANDS)
def test_every_long_command_draws_through_the_terminal_only_bar(module: str) -> None:
    assert "progress(" in (SRC / "cli" / module).read_text()
