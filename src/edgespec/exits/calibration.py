"""Choosing each exit's streaming threshold from a precision / coverage curve.

The rule (documented, used for the shipped heads): on a calibration set of real speculative
rounds that is *not* the benchmark (held-out ShareGPT conversations), an exit's threshold is the
**lowest** value on the grid 0.00, 0.01, ..., 1.00 at which

* precision (the share of rounds with confidence >= threshold whose early verdict equals the
  final verdict) is at least ``min_precision`` (default 0.9), and
* at least ``min_count`` calibration rounds (default 10) clear the threshold,

so the exit streams as often as it can while being right at least ``min_precision`` of the time
on the calibration data. An exit with no such threshold gets ``NEVER`` (> 1: it never streams).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

GRID = tuple(round(0.01 * i, 2) for i in range(101))
NEVER = 1.01  # above any probability: the exit never streams


@dataclass(frozen=True)
class CurvePoint:
    threshold: float
    coverage: float  # share of all rounds whose confidence clears the threshold
    precision: float  # share of those whose early verdict is right (nan when none clear)
    count: int  # rounds that clear the threshold


def precision_coverage(
    confidence: Sequence[float] | torch.Tensor, correct: Sequence[bool] | torch.Tensor, grid: Sequence[float] = GRID
) -> list[CurvePoint]:
    conf = torch.as_tensor(confidence, dtype=torch.float64)
    right = torch.as_tensor(correct, dtype=torch.bool)
    total = max(int(conf.numel()), 1)
    points = []
    for threshold in grid:
        cleared = conf >= threshold
        count = int(cleared.sum())
        precision = float(right[cleared].double().mean()) if count else float("nan")
        points.append(CurvePoint(float(threshold), count / total, precision, count))
    return points


def pick_threshold(
    confidence: Sequence[float] | torch.Tensor,
    correct: Sequence[bool] | torch.Tensor,
    min_precision: float = 0.9,
    min_count: int = 10,
    grid: Sequence[float] = GRID,
) -> float:
    """The lowest grid threshold with precision >= ``min_precision`` over >= ``min_count`` rounds."""
    for point in precision_coverage(confidence, correct, grid):
        if point.count >= min_count and point.precision >= min_precision:
            return point.threshold
    return NEVER


def calibration_rule(min_precision: float, min_count: int) -> str:
    return (
        f"lowest threshold on the grid 0.00..1.00 (step 0.01) with early-verdict precision >= {min_precision} "
        f"over >= {min_count} calibration rounds (held-out ShareGPT prompts, real draft, greedy); "
        f"{NEVER} = never streams"
    )
