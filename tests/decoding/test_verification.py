"""The verification rule, as a specification: greedy verdicts, and rejection sampling that
preserves the target distribution (checked statistically, vLLM style)."""

from __future__ import annotations

import itertools

import pytest
import torch

from edgespec.core.config import DRAFT_SEED_OFFSET, SamplingParams
from edgespec.core.verdict import Verdict
from edgespec.decoding.verification import (
    RoundUniforms,
    greedy_verdict,
    rejection_sample_verdict,
    verdict_confidence,
    verdict_from_logits,
)
from edgespec.sampling import logits_to_probs, position_uniform, sample_with_uniform, seeded_generator


def one_hot_logits(choices: list[int], vocab: int = 10) -> torch.Tensor:
    logits = torch.zeros(len(choices), vocab)
    for row, token in enumerate(choices):
        logits[row, token] = 5.0
    return logits


def test_greedy_all_accepted_gives_bonus_token() -> None:
    assert greedy_verdict(one_hot_logits([1, 2, 3, 7]), [1, 2, 3]) == Verdict(accepted=3, next_token=7)


def test_greedy_first_mismatch_gives_correction() -> None:
    assert greedy_verdict(one_hot_logits([1, 5, 3, 7]), [1, 2, 3]) == Verdict(accepted=1, next_token=5)


def test_greedy_rejects_at_first_position() -> None:
    assert greedy_verdict(one_hot_logits([4, 2, 3, 7]), [1, 2, 3]) == Verdict(accepted=0, next_token=4)


def test_verdict_commits_accepted_prefix_and_next_token() -> None:
    assert Verdict(accepted=2, next_token=9).committed([4, 5, 6]) == [4, 5, 9]


def test_wrong_logit_rows_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"expected logits of shape \[4, vocab\]"):
        greedy_verdict(torch.zeros(3, 10), [1, 2, 3])


def test_confidence_is_lowest_top1_probability_over_deciding_positions() -> None:
    logits = torch.log(torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]))
    verdict = greedy_verdict(logits, [0, 0])
    assert verdict == Verdict(accepted=2, next_token=1)
    assert verdict_confidence(logits, verdict) == pytest.approx(0.6)
    assert verdict_confidence(logits, Verdict(accepted=0, next_token=0)) == pytest.approx(0.9)


def test_inverse_cdf_draw_respects_zero_probability_slots() -> None:
    probs = torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0])
    draws = {sample_with_uniform(probs, u / 100) for u in range(100)}
    assert draws == {1, 3}
    assert sample_with_uniform(probs, 0.999999999) == 3


def test_top_k_and_top_p_filter_the_distribution() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    top2 = logits_to_probs(logits, SamplingParams(temperature=1.0, top_k=2))
    assert torch.allclose(top2, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    nucleus = logits_to_probs(logits, SamplingParams(temperature=1.0, top_p=0.8))
    assert torch.allclose(nucleus, torch.tensor([0.625, 0.375, 0.0, 0.0]))


VOCAB = 3
LENGTH = 3  # tokens per sampled sequence: 3**3 = 27 outcomes


def sample_sequences_speculatively(
    target: torch.Tensor, draft: torch.Tensor, gamma: int, samples: int, seed: int, position_tied: bool = False
) -> torch.Tensor:
    """Sequences of LENGTH tokens from position-wise distributions ``target`` [LENGTH, V], drafted
    from ``draft`` [LENGTH, V] and verified round by round. Returns outcome counts [V ** LENGTH].

    ``position_tied``: every uniform keyed by (seed, position) as the system draws them (the
    draft's ``position_uniform``, the target's ``RoundUniforms.at``), one seed per sequence."""
    generator = seeded_generator(seed)
    counts = torch.zeros(VOCAB**LENGTH)
    for sample in range(samples):
        sequence: list[int] = []
        while len(sequence) < LENGTH:
            start = len(sequence)
            block = min(gamma, LENGTH - start)
            positions = [min(start + i, LENGTH - 1) for i in range(block + 1)]
            q = draft[positions[:block]]
            if position_tied:
                key = seed * 100_000 + sample
                tokens = [
                    sample_with_uniform(q[i], position_uniform(key + DRAFT_SEED_OFFSET, start + i))
                    for i in range(block)
                ]
                uniforms = RoundUniforms.at(key, start, block)
            else:
                tokens = [
                    sample_with_uniform(q[i], float(torch.rand(1, generator=generator, dtype=torch.float64)))
                    for i in range(block)
                ]
                uniforms = RoundUniforms.draw(generator, block)
            verdict = rejection_sample_verdict(target[positions], tokens, q, uniforms)
            sequence.extend(verdict.committed(tokens))
        index = 0
        for token in sequence[:LENGTH]:
            index = index * VOCAB + token
        counts[index] += 1
    return counts


def product_distribution(target: torch.Tensor) -> torch.Tensor:
    probs = torch.zeros(VOCAB**LENGTH)
    for index, tokens in enumerate(itertools.product(range(VOCAB), repeat=LENGTH)):
        probs[index] = torch.prod(torch.stack([target[pos, tok] for pos, tok in enumerate(tokens)]))
    return probs


# Position-tied draws are checked where rounds are many per sequence (a resumed session's case).
@pytest.mark.parametrize(
    "gamma, position_tied",
    [(1, False), (2, False), (3, False), (1, True), (2, True)],
    ids=["1-sequential", "2-sequential", "3-sequential", "1-position-tied", "2-position-tied"],
)
def test_rejection_sampling_converges_to_the_target_distribution(gamma: int, position_tied: bool) -> None:
    generator = seeded_generator(1234 + gamma)
    target = torch.rand(LENGTH, VOCAB, generator=generator, dtype=torch.float64) ** 2
    target /= target.sum(-1, keepdim=True)
    draft = torch.rand(LENGTH, VOCAB, generator=generator, dtype=torch.float64) ** 2
    draft[:, 0] = 0.0  # the draft never proposes token 0: only recovery can produce it
    draft /= draft.sum(-1, keepdim=True)
    expected = product_distribution(target)
    distances = []
    for samples in (200, 1_500, 8_000):
        counts = sample_sequences_speculatively(
            target, draft, gamma, samples, seed=samples + gamma, position_tied=position_tied
        )
        distances.append(float(0.5 * (counts / samples - expected).abs().sum()))
    # Total variation shrinks like 1/sqrt(samples); the biased draft alone is far off.
    draft_distance = float(0.5 * (product_distribution(draft) - expected).abs().sum())
    assert distances[0] > distances[1] > distances[2], distances
    assert distances[2] < 0.05, distances
    assert draft_distance > 0.3


def test_sampled_verdict_is_a_deterministic_function_of_its_uniforms() -> None:
    logits = torch.randn(4, 50, generator=seeded_generator(0))
    params = SamplingParams(temperature=0.8, top_k=20)
    draft_probs = logits_to_probs(torch.randn(3, 50, generator=seeded_generator(1)), params)
    tokens = [int(torch.argmax(draft_probs[i])) for i in range(3)]
    first = [
        verdict_from_logits(logits, tokens, params, draft_probs, RoundUniforms.draw(seeded_generator(s), 3))
        for s in range(20)
    ]
    again = [
        verdict_from_logits(logits, tokens, params, draft_probs, RoundUniforms.draw(seeded_generator(s), 3))
        for s in range(20)
    ]
    assert first == again
    assert len(set(first)) > 1


def test_position_tied_uniforms_depend_on_the_position_alone() -> None:
    whole = RoundUniforms.at(7, start=10, gamma=4)  # positions 10..14
    later = RoundUniforms.at(7, start=12, gamma=2)  # positions 12..14, as a round after a resume sees them
    assert later.accept == whole.accept[2:] and later.resample == whole.resample[2:]
    assert RoundUniforms.at(8, start=10, gamma=4) != whole
    assert len(set(whole.accept + whole.resample)) == 9


def test_sampled_verdict_needs_draft_probabilities() -> None:
    with pytest.raises(ValueError, match="draft probabilities"):
        verdict_from_logits(torch.zeros(2, 5), [1], SamplingParams(temperature=1.0))
