"""The calibration rule picks the documented threshold on synthetic curves."""

from __future__ import annotations

import math

import torch

from edgespec.exits.calibration import NEVER, pick_threshold, precision_coverage


def _synthetic(n: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    # Confidence uniform on [0, 1); a verdict at confidence c is right iff c >= 0.5 or it is one
    # of every 4th below (precision among c >= t: exactly computable).
    confidence = torch.arange(n, dtype=torch.float64) / n
    correct = (confidence >= 0.5) | (torch.arange(n) % 4 == 0)
    return confidence, correct


def _expected_lowest(confidence: torch.Tensor, correct: torch.Tensor, target: float, min_count: int) -> float:
    for i in range(101):
        t = i / 100
        cleared = confidence >= t
        if int(cleared.sum()) >= min_count and float(correct[cleared].double().mean()) >= target:
            return t
    return NEVER


def test_picks_the_lowest_grid_threshold_with_enough_precision() -> None:
    confidence, correct = _synthetic()
    # For t < 0.5, precision over c >= t is about (625 - 250 t) / (1000 (1 - t)): >= 0.9 from
    # t = 0.423 on, so the lowest grid point is 0.43; >= 0.75 from t = 0.25 (0.26 once the exact
    # count of every-4th below 0.5 is used); only c >= 0.5 is always right.
    assert (
        pick_threshold(confidence, correct, min_precision=0.9, min_count=10)
        == _expected_lowest(confidence, correct, 0.9, 10)
        == 0.43
    )
    assert (
        pick_threshold(confidence, correct, min_precision=0.75, min_count=10)
        == _expected_lowest(confidence, correct, 0.75, 10)
        == 0.26
    )
    assert pick_threshold(confidence, correct, min_precision=0.6, min_count=10) == 0.0  # 0.625 overall
    assert pick_threshold(confidence, correct, min_precision=1.0, min_count=10) == 0.5


def test_needs_enough_rounds_and_never_streams_when_no_threshold_qualifies() -> None:
    confidence = torch.tensor([0.2, 0.3, 0.95, 0.97])
    correct = torch.tensor([False, False, True, True])
    assert pick_threshold(confidence, correct, min_precision=0.9, min_count=2) == 0.31
    assert pick_threshold(confidence, correct, min_precision=0.9, min_count=3) == NEVER
    assert pick_threshold(torch.tensor([0.9, 0.8]), torch.tensor([False, False]), min_count=1) == NEVER


def test_curve_coverage_and_precision() -> None:
    points = precision_coverage([0.1, 0.5, 0.9, 1.0], [False, True, True, False], grid=[0.0, 0.5, 0.95, 1.0])
    assert [p.count for p in points] == [4, 3, 1, 1]
    assert [p.coverage for p in points] == [1.0, 0.75, 0.25, 0.25]
    assert points[1].precision == 2 / 3 and points[2].precision == 0.0
    empty = precision_coverage([0.1], [True], grid=[0.5])[0]
    assert empty.count == 0 and math.isnan(empty.precision)
