"""The adaptive draft length finds the best block length of a deployment from what it measures:
simulated sessions with known acceptance and costs (GPU-like flat verify, CPU-like linear
verify) do within a few percent of the best fixed γ, far better than the worst one."""

from __future__ import annotations

import random
from typing import Callable

import pytest

from edgespec.core.gamma import AdaptiveGamma

DRAFT_S = 0.02  # per draft token (the llama.cpp draft measured here: 20.7 ms)


def simulate(
    choose: Callable[[], int],
    observe: Callable[[int, int, float, float, float], None] | None,
    alpha: float,
    verify_s: Callable[[int], float],
    rest_s: float,
    tokens: int = 3000,
    seed: int = 0,
) -> float:
    """Tokens per second of a session whose draft tokens are each accepted with ``alpha``."""
    rng = random.Random(seed)
    produced, elapsed = 0, 0.0
    while produced < tokens:
        gamma = choose()
        accepted = 0
        while accepted < gamma and rng.random() < alpha:
            accepted += 1
        draft, verify = gamma * DRAFT_S, verify_s(gamma)
        elapsed += draft + verify + rest_s
        produced += accepted + 1
        if observe is not None:
            observe(gamma, accepted, draft, verify, draft + verify + rest_s)
    return produced / elapsed


GPU = lambda gamma: 0.018 + 0.0002 * gamma  # noqa: E731 - H200, 1.5B target: flat in γ
CPU = lambda gamma: 0.45 + 0.30 * gamma  # noqa: E731 - this machine's CPU target: linear in γ


@pytest.mark.parametrize("alpha", [0.5, 0.8, 0.95])
@pytest.mark.parametrize(
    "verify, rest_s", [(GPU, 0.05), (CPU, 0.05), (GPU, 0.2)], ids=["gpu-wan", "cpu-wan", "gpu-cellular"]
)
def test_adaptive_gamma_is_within_a_few_percent_of_the_best_fixed_gamma(alpha: float, verify, rest_s: float) -> None:
    fixed = {g: simulate(lambda g=g: g, None, alpha, verify, rest_s) for g in range(1, 9)}
    policy = AdaptiveGamma(initial=4, max_gamma=8)
    adaptive = simulate(policy.next_gamma, policy.observe, alpha, verify, rest_s)
    best, worst = max(fixed.values()), min(fixed.values())
    assert adaptive >= 0.95 * best, f"adaptive {adaptive:.2f} tok/s vs best fixed {best:.2f} ({fixed})"
    assert best > worst  # the choice matters in every case tested


def test_it_picks_long_blocks_on_a_gpu_and_short_ones_on_a_cpu() -> None:
    choices = {}
    for name, verify in (("gpu", GPU), ("cpu", CPU)):
        policy = AdaptiveGamma(initial=4, max_gamma=8)
        simulate(policy.next_gamma, policy.observe, 0.9, verify, 0.05, tokens=500)
        choices[name] = policy.next_gamma()
    assert choices["gpu"] >= 5 and choices["cpu"] <= 3, choices


def test_untried_lengths_are_extrapolated_from_tried_ones() -> None:
    policy = AdaptiveGamma()
    assert policy.next_gamma() == 4  # nothing measured yet
    policy.observe(2, 1, 0.04, 1.0, 1.1)
    assert policy.verify_s(6) == pytest.approx(1.0)  # one length tried: assumed flat
    policy.observe(4, 4, 0.08, 2.0, 2.1)
    assert policy.verify_s(6) == pytest.approx(3.0)
    assert policy.verify_s(1) == pytest.approx(0.5)


def test_bad_observations_and_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        AdaptiveGamma(initial=9, max_gamma=8)
    with pytest.raises(ValueError):
        AdaptiveGamma().observe(3, 4, 0.1, 0.1, 0.3)
