"""The code blocks of the README and the guides, read from the Markdown and run as a reader would.

Every fenced block on a page listed in `PAGES` carries a marker on the line before it:

    <!-- example: KIND -->            KIND is one of
      suite      runs in the test suite (cheap: help, listings, a file the page shows)
      smoke      runs in `make docs-check`, on the smoke model in place of the preset pair
      real-pair  runs in `make docs-check` as written, on the real pair (minutes to hours)
      not-run: REASON   cannot run on one CPU machine, REASON one of NOT_RUN_REASONS
    <!-- example: smoke, continues -->  a Python block that goes on from the page's previous one

A page's blocks of the chosen kinds run in page order in one bash script, so a server a block
starts serves the blocks after it, as in the reader's terminals (tests/docs/example_shell.sh says
how servers, models and `make` are handled). Python blocks run as files; a `continues` block gets
the blocks it continues prepended. For `smoke`, the text of a block is changed only by
`runnable_text`: the documented ports become free ones (so parallel runs cannot collide),
`verifier.example` becomes this machine, and for `smoke` the preset pair becomes the smoke model.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = (ROOT / "README.md", ROOT / "docs" / "getting-started.md", *sorted((ROOT / "docs" / "guides").glob("*.md")))
KINDS = ("suite", "smoke", "real-pair", "not-run")
NOT_RUN_REASONS = {
    "gpu": "needs a CUDA device",
    "cluster": "needs a Ray cluster of several machines",
    "output": "shows output or a diagram, not a command",
    "synopsis": "a command synopsis with alternatives in brackets, each form run elsewhere",
    "file-format": "the format of a file, loaded by the test that names it",
    "own-models": "names model files the reader brings",
    "tool-model": "needs a model whose chat template carries tool calls (the smoke model's cannot); "
    "the tool-calls guide's real-pair examples run the same calls",
}
SMOKE_MODEL = "smollm2-135m"
PRESETS = ("qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b")
DOCUMENTED_PORTS = ("50051", "50052", "8000")
VERIFIER_HOST = "verifier.example"  # the docs' name for the cloud machine; here, this one

MARKER = re.compile(r"^<!-- example: (?P<kind>[a-z-]+)(?::\s*(?P<reason>[a-z-]+))?(?P<continues>, continues)? -->$")
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+)(?P<lang>[\w+-]*)\s*$")


@dataclass(frozen=True)
class Example:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    kind: str | None  # None: the block has no marker
    reason: str | None
    continues: bool
    code: str

    @property
    def where(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line}"


def extract(page: Path) -> list[Example]:
    """Every fenced block of `page`, with the marker of the line before it (blank lines skipped)."""
    lines = page.read_text().splitlines()
    examples, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == opening["fence"])
        before = next((lines[i].strip() for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        marker = MARKER.match(before)
        indent = len(opening["indent"])
        examples.append(
            Example(
                page=page,
                line=index + 1,
                lang=opening["lang"],
                kind=marker["kind"] if marker else None,
                reason=marker["reason"] if marker else None,
                continues=bool(marker and marker["continues"]),
                code="\n".join(line[indent:] for line in lines[index + 1 : end]) + "\n",
            )
        )
        index = end + 1
    return examples


def classification_errors(example: Example) -> list[str]:
    """What is wrong with a block's marker; empty when it is classified properly."""
    if example.kind is None:
        return [f"{example.where}: a ```{example.lang} block without an '<!-- example: KIND -->' line before it"]
    if example.kind not in KINDS:
        return [f"{example.where}: unknown kind {example.kind!r}; one of {', '.join(KINDS)}"]
    if example.kind == "not-run" and example.reason not in NOT_RUN_REASONS:
        return [f"{example.where}: not-run needs a reason, one of {', '.join(NOT_RUN_REASONS)}"]
    if example.kind != "not-run" and example.lang not in ("sh", "python"):
        return [f"{example.where}: only sh and python blocks run; a ```{example.lang} block is not-run"]
    return []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def runnable_text(code: str, ports: dict[str, str], models: str) -> str:
    """A block's text as run here: free ports for the documented ones, this machine as the verifier's
    host, and (``models="smoke"``) the smoke model for the presets."""
    if models == "smoke":
        for preset in PRESETS:
            code = code.replace(preset, SMOKE_MODEL)
    code = code.replace(VERIFIER_HOST, "localhost")
    for documented, free in ports.items():
        code = re.sub(rf"(?<![\d.]){documented}(?!\d)", free, code)
    return code


def page_script(examples: list[Example], models: str, workdir: Path) -> str:
    """One bash script that runs `examples` (one page's, in page order) as a reader would."""
    ports = {port: str(free_port()) for port in DOCUMENTED_PORTS}
    parts = [f"source {ROOT / 'tests' / 'docs' / 'example_shell.sh'}", f"cd {workdir}"]
    python_so_far: list[str] = []
    for number, example in enumerate(examples):
        code = runnable_text(example.code, ports, models)
        parts.append(f"echo '--- {example.where}' >&2")
        if example.lang == "python":
            program = "".join(python_so_far) + code if example.continues else code
            python_so_far = [*python_so_far, code] if example.continues else [code]
            path = workdir / f"example_{number}.py"
            path.write_text(program)
            parts.append(f"python {path}")
        else:
            parts.append(code)
    return "\n".join(parts) + "\n"


def run_page(examples: list[Example], models: str, workdir: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run one page's examples; the result's stderr names each block as it starts."""
    script = workdir / "page.sh"
    script.write_text(page_script(examples, models, workdir))
    venv = Path(sys.executable).parent.parent
    environment = {
        "EXAMPLE_MODELS": models,
        "EXAMPLE_SMOKE_MODEL": SMOKE_MODEL,
        "EXAMPLE_MAX_NEW_TOKENS": "16",
        "EXAMPLE_SERVER_WAIT_S": "600",
        "EXAMPLE_PYTHON": sys.executable,
        "EXAMPLE_REPO": str(ROOT),
        "EXAMPLE_VENV": str(venv),
    }

    # Without the docs-check switch: a page's `make test` must not run the pages again.
    inherited = {name: value for name, value in os.environ.items() if name != "EDGESPEC_DOCS_CHECK"}
    env = {**inherited, **environment, "PYTHONPATH": str(ROOT / "src"), "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", str(script)], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )
