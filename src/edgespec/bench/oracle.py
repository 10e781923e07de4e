"""The oracle for greedy output, and what to say when an output differs from another.

The oracle is `transformers` `generate` on the target in float32, greedy, stopping on the
server's EOS ids. A mode's output is *lossless* when it equals the oracle. In bfloat16 the
server's own `cloud-ar` is not the oracle: a verify (γ + 1 rows) and a decode (1 row) round
differently, so at a near-tie between the target's top two tokens bf16 `cloud-ar` and a
speculative mode can pick different tokens, and the texts part there. `explain_difference`
names that position and the fp32 margin between the target's top two logits at it, from one
teacher-forced forward over the reference text.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

logger = logging.getLogger(__name__)


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first token where ``a`` and ``b`` differ (a length difference counts at the
    shorter one's end); None when they are equal."""
    for index, (x, y) in enumerate(zip(a, b)):
        if int(x) != int(y):
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def oracle_generate(model: Any, prompt_ids: Sequence[int], max_new_tokens: int, eos_ids: Iterable[int]) -> list[int]:
    """Plain greedy `generate` (no sampling, no repetition penalty, whatever the model's own
    generation config says), stopping after the first EOS id."""
    from transformers import GenerationConfig

    eos = sorted(int(t) for t in eos_ids)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos or None,
        pad_token_id=eos[0] if eos else 0,
    )
    prompt = torch.tensor([list(prompt_ids)], device=model.device)
    with torch.inference_mode():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=config)
    return [int(t) for t in out[0, len(prompt_ids) :].tolist()]


@dataclass(frozen=True)
class Margin:
    """The target's choice at one position of a teacher-forced text."""

    position: int  # index into the generated tokens
    top1: int
    top2: int
    margin: float  # top-1 logit minus top-2 logit


def top2_margins(
    model: Any, prompt_ids: Sequence[int], tokens: Sequence[int], positions: Iterable[int]
) -> list[Margin]:
    """One forward over ``prompt_ids + tokens``: at each of ``positions`` (indices into
    ``tokens``), the target's top two next-token candidates and the gap between their logits."""
    positions = sorted(set(int(p) for p in positions))
    if not positions:
        return []
    if positions[0] < 0 or positions[-1] >= len(tokens) + 1:
        raise ValueError(f"positions must lie in 0..{len(tokens)}, got {positions}")
    ids = torch.tensor([list(prompt_ids) + list(tokens)], device=model.device)
    with torch.inference_mode():
        logits = model(input_ids=ids, use_cache=False).logits[0].float()
    margins = []
    for position in positions:
        values, indices = torch.topk(logits[len(prompt_ids) - 1 + position], 2)
        margins.append(Margin(position, int(indices[0]), int(indices[1]), float(values[0] - values[1])))
    return margins


@dataclass(frozen=True)
class Difference:
    """Where one output parts from a reference output, and how close the target was to a tie."""

    position: int
    reference_token: int
    other_token: int | None  # None: the other output ended here
    fp32_top1: int
    fp32_top2: int
    fp32_margin: float

    @property
    def fp32_agrees_with(self) -> str:
        if self.fp32_top1 == self.reference_token:
            return "reference"
        if self.fp32_top1 == self.other_token:
            return "other"
        return "neither"


def explain_difference(
    fp32_model: Any, prompt_ids: Sequence[int], reference: Sequence[int], other: Sequence[int]
) -> Difference | None:
    """The first position where ``other`` parts from ``reference``, with the fp32 target's top two
    tokens and their logit margin there (teacher-forced on ``reference``; after the first
    difference the two texts have different prefixes, so later positions say nothing more)."""
    position = first_difference(reference, other)
    if position is None:
        return None
    if position >= len(reference):  # the reference ended first: compare with what it stopped on
        reference_token = -1
    else:
        reference_token = int(reference[position])
    [margin] = top2_margins(fp32_model, prompt_ids, list(reference[:position]), [position])
    return Difference(
        position=position,
        reference_token=reference_token,
        other_token=int(other[position]) if position < len(other) else None,
        fp32_top1=margin.top1,
        fp32_top2=margin.top2,
        fp32_margin=margin.margin,
    )


class OracleCache:
    """fp32 `generate` outputs on disk, keyed by (target, prompt, max new tokens, EOS ids), so a
    benchmark rerun does not pay for them again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, list[int]] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    entry = json.loads(line)
                    self._entries[entry["key"]] = entry["tokens"]

    @staticmethod
    def key(target: str, prompt_ids: Sequence[int], max_new_tokens: int, eos_ids: Iterable[int]) -> str:
        raw = json.dumps([target, list(prompt_ids), max_new_tokens, sorted(eos_ids)])
        return hashlib.sha256(raw.encode()).hexdigest()

    def get(self, key: str) -> list[int] | None:
        return self._entries.get(key)

    def put(self, key: str, tokens: list[int], **about: object) -> None:
        self._entries[key] = tokens
        with self.path.open("a") as sink:
            sink.write(json.dumps({"key": key, "tokens": tokens, **about}) + "\n")


def describe_difference(
    difference: Difference, decode: Any = None, reference: str = "reference", other: str = "this mode"
) -> str:
    """One line a person can read: where, what each side chose, and the fp32 margin."""
    show = (lambda t: repr(decode([t]))) if decode is not None else str
    choice = "ended" if difference.other_token is None else f"chose {show(difference.other_token)}"
    return (
        f"token {difference.position}: {reference} chose {show(difference.reference_token)}, {other} {choice}; "
        f"fp32 target's top two there: {show(difference.fp32_top1)} vs {show(difference.fp32_top2)}, "
        f"margin {difference.fp32_margin:.3f} logits"
    )


def as_dict(difference: Difference) -> dict[str, Any]:
    return {**asdict(difference), "fp32_agrees_with": difference.fp32_agrees_with}


def explain_outputs(
    fp32_model: Any,
    prompt_ids: Sequence[int],
    outputs: dict[str, Sequence[int]],
    reference_mode: str = "cloud-ar",
    oracle: Sequence[int] | None = None,
    decode: Any = None,
    skip: Iterable[str] = ("edge-only",),
) -> list[str]:
    """Lines that say, for every mode whose output differs from ``reference_mode``'s, where it
    parts and how close the fp32 target was to a tie there; then, given ``oracle`` (fp32
    `generate`), which outputs equal it."""
    reference = outputs[reference_mode]
    skipped = set(skip)
    lines = []
    for mode, tokens in outputs.items():
        if mode == reference_mode or mode in skipped:
            continue
        difference = explain_difference(fp32_model, prompt_ids, reference, tokens)
        if difference is None:
            continue
        side = {"reference": reference_mode, "other": mode, "neither": "neither"}[difference.fp32_agrees_with]
        lines.append(
            f"{mode}: {describe_difference(difference, decode, reference_mode, mode)}; fp32 picks {side}'s token"
        )
    if oracle is not None:
        equal = [mode for mode, tokens in outputs.items() if first_difference(oracle, tokens) is None]
        parted = [
            f"{mode} (from token {first_difference(oracle, tokens)})"
            for mode, tokens in outputs.items()
            if mode not in equal
        ]
        lines.append(
            "fp32 generate (the oracle) equals: "
            + (", ".join(equal) or "none")
            + ("; differs from: " + ", ".join(parted) if parted else "")
        )
    return lines
