"""Greedy traces: per prompt, the target's greedy continuation and, teacher-forced along it, the
draft's argmax (with its top-k probabilities) and each exit's argmax and confidence.

For greedy decoding this fixes every verdict: a block's accepted count is the length of its
prefix that matches the continuation, and the next token is the continuation's. It fixes every
early verdict that is right (an exit's argmax along the continuation); an early verdict that runs
past the first draft/target disagreement is wrong whatever it says, and is replayed as a miss.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from edgespec.models.draft import top_candidates
from edgespec.models.exit_heads import ExitReading
from edgespec.models.target import TargetRuntime

logger = logging.getLogger(__name__)

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


@torch.inference_mode()
def record_trace(
    target: TargetRuntime,
    draft_model: torch.nn.Module,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    eos_ids: Iterable[int],
    prompt_id: str = "",
    prompt_set: str = "",
) -> Trace:
    eos = set(eos_ids)
    model = target.model
    output = model.generate(
        torch.tensor([list(prompt_ids)]),
        attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=sorted(eos) or None,
        pad_token_id=0,
    )
    continuation = output[0, len(prompt_ids) :].tolist()
    ended = bool(continuation) and continuation[-1] in eos
    sequence = list(prompt_ids) + continuation
    tail = len(continuation) + 1
    readings: dict[int, ExitReading] = {}
    target.reset()
    target.score_tail(sequence, tail, on_exit=lambda reading: readings.__setitem__(reading.layer, reading))
    target.reset()
    draft_logits = draft_model(torch.tensor([sequence])).logits[0, -tail:].float()
    draft_argmax = draft_logits.argmax(dim=-1)
    # What a greedy client would send at each position along the continuation: its top-8 ids.
    candidates = torch.stack([top_candidates(row, int(token)) for row, token in zip(draft_logits, draft_argmax)])
    exits: dict[str, ExitTrace] = {}
    if target.exits is not None:
        for layer, reading in sorted(readings.items()):
            logits = reading.logits.float()
            top = logits.softmax(dim=-1).max(dim=-1)
            restricted = logits.gather(1, candidates).softmax(dim=-1).max(dim=-1)
            exits[str(layer)] = ExitTrace(
                top.indices.tolist(), [round(float(p), 5) for p in top.values], target.exits.spec(layer).threshold,
                candidates.gather(1, restricted.indices[:, None]).squeeze(1).tolist(), [round(float(p), 5) for p in restricted.values],
            )
    draft_probs = draft_logits.softmax(dim=-1)
    topk = draft_probs.topk(TOPK, dim=-1)
    return Trace(
        id=prompt_id,
        prompt_set=prompt_set,
        prompt_ids=list(prompt_ids),
        continuation=continuation,
        ended_in_eos=ended,
        draft_argmax=draft_argmax.tolist(),
        draft_topk_ids=topk.indices.tolist(),
        draft_topk_probs=[[round(float(p), 5) for p in row] for row in topk.values],
        exits=exits,
        num_layers=target.num_layers,
    )


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
