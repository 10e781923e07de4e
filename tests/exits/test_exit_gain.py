"""Exit thresholds chosen from expected gain (edgespec/exits/gain.py)."""

from __future__ import annotations

import torch

from edgespec.exits.calibration import NEVER
from edgespec.exits.gain import RoundCosts, expected_saving_s, pick_threshold_by_gain

COSTS = RoundCosts(verify_s=0.333, draft_s=0.0388, one_way_s=0.025, gamma=4, num_layers=28)


def test_an_earlier_exit_saves_more_and_pipelining_saves_at_least_as_much() -> None:
    savings = [COSTS.hit_saving_s(layer, pipelined=True) for layer in (7, 14, 21, 26)]
    assert savings == sorted(savings, reverse=True) and savings[-1] > 0
    for layer in (7, 14, 21, 26):
        assert COSTS.hit_saving_s(layer, pipelined=True) >= COSTS.hit_saving_s(layer, pipelined=False)
    # Pipelined, the most a hint can save is the whole draft + round trip an sd round waits for.
    assert COSTS.hit_saving_s(1, pipelined=True) <= 4 * 0.0388 + 2 * 0.025 + 1e-9
    # An exit that reads after the verdict would have arrived anyway saves nothing.
    assert COSTS.hit_saving_s(28, pipelined=True) == 0.0


def test_the_threshold_that_saves_most_is_chosen() -> None:
    # Confident verdicts are right, unsure ones wrong: stream exactly the confident ones.
    confidence = torch.tensor([0.9] * 20 + [0.3] * 20)
    correct = torch.tensor([True] * 20 + [False] * 20)
    streams = torch.ones(40, dtype=torch.bool)
    threshold, saving = pick_threshold_by_gain(confidence, correct, streams, saving_s=0.1, miss_cost_s=0.04)
    assert 0.3 < threshold <= 0.9
    assert saving == expected_saving_s(confidence, correct, streams, threshold, 0.1, 0.04) == 20 * 0.1 / 40


def test_a_cheap_miss_lets_an_unsure_exit_stream() -> None:
    # Right one time in three: worth streaming when a hit saves 5x what a miss costs, not at 0.9 precision.
    confidence = torch.full((30,), 0.4)
    correct = torch.tensor([True, False, False] * 10)
    streams = torch.ones(30, dtype=torch.bool)
    assert pick_threshold_by_gain(confidence, correct, streams, saving_s=0.2, miss_cost_s=0.04)[0] <= 0.4
    assert pick_threshold_by_gain(confidence, correct, streams, saving_s=0.05, miss_cost_s=0.04)[0] == NEVER


def test_verdicts_that_never_stream_do_not_count() -> None:
    confidence = torch.full((30,), 0.9)
    correct = torch.ones(30, dtype=torch.bool)
    assert pick_threshold_by_gain(confidence, correct, torch.zeros(30, dtype=torch.bool), 0.2, 0.04) == (NEVER, 0.0)
