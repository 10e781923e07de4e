"""The README is a short front door, and neither it nor the documentation pages name internal
issue numbers."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOC_PAGES = sorted((ROOT / "docs").rglob("*.md"))
ISSUE_REFERENCE = re.compile(r"\bissues?\b|(?<![\w/.-])#\d+\b", re.IGNORECASE)


def test_readme_is_at_most_200_lines() -> None:
    assert len(README.read_text().splitlines()) <= 200


def test_readme_starts_with_the_two_setup_commands() -> None:
    # The example markers (tests/docs/examples.py) are HTML comments: not shown, so not counted.
    lines = [line for line in README.read_text().splitlines() if line.strip() and not line.startswith("<!--")]
    assert lines[0] == "# edgespec"
    assert lines[1] == "```sh"
    assert lines[2].startswith("make demo ")
    assert lines[3].startswith("make test ")


def test_no_issue_numbers_in_readme_or_docs() -> None:
    assert DOC_PAGES
    for path in [README, *DOC_PAGES]:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            assert not ISSUE_REFERENCE.search(line), f"{path.relative_to(ROOT)}:{number}: {line}"


def test_the_packaged_description_is_the_readme() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^readme = "README.md"$', pyproject, re.MULTILINE)
    assert re.search(r"^docs = \[", pyproject, re.MULTILINE)
