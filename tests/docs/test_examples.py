"""Every code block in the README, getting started and the guides is either run (here, or by
`make docs-check`) or says why it cannot be; a page cannot gain an example nobody runs."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from edgespec.drivers.cost_profile import HardwareProfile
from tests.docs.examples import PAGES, ROOT, Example, classification_errors, extract, run_page, runnable_text

EXAMPLES = [example for page in PAGES for example in extract(page)]
DOCS_CHECK = os.environ.get("EDGESPEC_DOCS_CHECK", "")  # `make docs-check` sets it: "smoke", "real-pair" or both


def _pages_with(kind: str) -> list[Path]:
    return sorted({example.page for example in EXAMPLES if example.kind == kind})


def _of(page: Path, kind: str) -> list[Example]:
    return [example for example in extract(page) if example.kind == kind]


def test_every_block_is_classified() -> None:
    errors = [error for example in EXAMPLES for error in classification_errors(example)]
    assert not errors, "\n".join(errors)


def test_the_pages_hold_examples_of_every_runnable_kind() -> None:
    kinds = Counter(example.kind for example in EXAMPLES)
    assert len(PAGES) >= 10 and len(EXAMPLES) >= 30
    assert kinds["smoke"] >= 10 and kinds["real-pair"] >= 3 and kinds["suite"] >= 1


def test_a_block_without_a_marker_is_refused(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# A page\n\n```sh\nedgespec models list\n```\n\n<!-- example: not-run -->\n```sh\nls\n```\n")
    bare, no_reason = extract(page)
    assert classification_errors(bare) and "without" in classification_errors(bare)[0]
    assert classification_errors(no_reason) and "reason" in classification_errors(no_reason)[0]


def test_a_smoke_run_swaps_presets_ports_and_the_verifier_host_only() -> None:
    code = "edgespec generate --draft qwen2.5-coder-0.5b --server verifier.example:50051 --max-new-tokens 50052\n"
    ports = {"50051": "41001", "50052": "41002", "8000": "41003"}
    swapped = runnable_text(code, ports, "smoke")
    assert swapped == "edgespec generate --draft smollm2-135m --server localhost:41001 --max-new-tokens 41002\n"
    assert runnable_text("--draft qwen2.5-coder-0.5b --port 8000 -n 18000", ports, "real") == (
        "--draft qwen2.5-coder-0.5b --port 41003 -n 18000"
    )


def test_the_hardware_profile_file_shown_loads_as_a_profile(tmp_path: Path) -> None:
    (shown,) = [e for e in EXAMPLES if e.lang == "json" and e.page.name == "benchmark.md"]
    assert shown.reason == "file-format"
    path = tmp_path / "my-hardware.json"
    path.write_text(shown.code)
    profile = HardwareProfile.load(path)
    assert profile.name == json.loads(shown.code)["name"]
    assert profile.draft_ms_per_token == 25.0


@pytest.mark.parametrize("page", _pages_with("suite"), ids=lambda page: str(page.relative_to(ROOT)))
def test_the_suite_examples_of_a_page_run(page: Path, tmp_path: Path) -> None:
    result = run_page(_of(page, "suite"), "smoke", tmp_path, timeout_s=120)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.skipif("smoke" not in DOCS_CHECK, reason="make docs-check runs these (minutes on the smoke model)")
@pytest.mark.parametrize("page", _pages_with("smoke"), ids=lambda page: str(page.relative_to(ROOT)))
def test_the_smoke_examples_of_a_page_run(page: Path, tmp_path: Path) -> None:
    result = run_page(_of(page, "smoke"), "smoke", tmp_path, timeout_s=3600)
    assert result.returncode == 0, result.stderr[-6000:]


@pytest.mark.slow
@pytest.mark.skipif("real-pair" not in DOCS_CHECK, reason="make docs-check runs these (the real pair: hours)")
@pytest.mark.parametrize("page", _pages_with("real-pair"), ids=lambda page: str(page.relative_to(ROOT)))
def test_the_real_pair_examples_of_a_page_run(page: Path, tmp_path: Path) -> None:
    result = run_page(_of(page, "real-pair"), "real", tmp_path, timeout_s=4 * 3600)
    assert result.returncode == 0, result.stderr[-6000:]
