"""Greedy traces as data: per prompt, the target's greedy continuation and, teacher-forced along
it, the draft's argmax (with its top-k probabilities) and each exit's argmax and confidence.

They live beside the trace backends that replay them (``trace_backends.py``); recording one needs
the models and stays with the simulator (``sim/trace.py``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

TRACE_FILE = "traces.jsonl"
TOPK = 5


@dataclass
class ExitTrace:
    argmax: list[int]  # argmax[i]: the exit's choice after prompt + continuation[:i]
    confidence: list[float]  # its top-1 probability there
    threshold: float  # the exit streams a verdict at least this sure
    # The same scoring only the draft's top-8 ids there (its own token first), as a candidate-id
    # exit does (`serve --exit-vocab candidates`); None in traces recorded before those existed.
    candidate_argmax: list[int] | None = None
    candidate_confidence: list[float] | None = None


@dataclass
class Trace:
    id: str
    prompt_set: str
    prompt_ids: list[int]
    continuation: list[int]  # the target's greedy output (ends in EOS, or at max_new_tokens)
    ended_in_eos: bool
    draft_argmax: list[int]  # len(continuation) + 1 entries
    draft_topk_ids: list[list[int]]
    draft_topk_probs: list[list[float]]
    exits: dict[str, ExitTrace] = field(default_factory=dict)
    num_layers: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(line: str) -> "Trace":
        data = json.loads(line)
        data["exits"] = {layer: ExitTrace(**e) for layer, e in data.get("exits", {}).items()}
        return Trace(**data)


def load_traces(directory: str | Path) -> list[Trace]:
    path = Path(directory) / TRACE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no traces at {path}: record them with `edgespec trace --out {directory}`")
    return [Trace.from_json(line) for line in path.read_text().splitlines() if line.strip()]


def write_traces(directory: str | Path, traces: Sequence[Trace], meta: dict[str, Any]) -> Path:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / TRACE_FILE).write_text("".join(t.to_json() + "\n" for t in traces))
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out / TRACE_FILE
