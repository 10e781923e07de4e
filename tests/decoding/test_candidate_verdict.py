"""Candidate-id exits decide a greedy verdict from the logits of the draft's top-k ids only."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgespec.core.config import GREEDY
from edgespec.decoding.early import UNSCORED_BONUS, candidate_verdict, with_draft_tokens
from edgespec.decoding.verification import verdict_from_logits

VOCAB = 50


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 10_000), gamma=st.integers(1, 6), k=st.integers(2, 8), agree=st.floats(0.0, 1.0))
def test_equals_the_full_verdict_when_the_exit_argmax_is_a_candidate(
    seed: int, gamma: int, k: int, agree: float
) -> None:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(gamma + 1, VOCAB, generator=generator)
    argmax = logits.argmax(dim=-1)
    # A draft that agrees with the exit at random positions; its candidates hold the exit's argmax.
    draft = [
        int(argmax[i]) if torch.rand(1, generator=generator) < agree else int((argmax[i] + 1) % VOCAB)
        for i in range(gamma)
    ]
    others = torch.randperm(VOCAB, generator=generator)[: k + 2]
    rows = torch.stack([torch.cat([torch.tensor([draft[i], int(argmax[i])]), others])[:k] for i in range(gamma)])
    candidates = with_draft_tokens(rows, draft)
    full = verdict_from_logits(logits, draft, GREEDY)
    verdict, confidence = candidate_verdict(logits[:gamma].gather(1, candidates), candidates, draft)
    assert 0.0 < confidence <= 1.0
    if full.accepted < gamma:
        assert verdict == full
    else:
        assert verdict.accepted == gamma and verdict.next_token == UNSCORED_BONUS


def test_a_correction_outside_the_candidates_cannot_be_named() -> None:
    logits = torch.zeros(3, VOCAB)
    logits[0, 7] = 5.0  # the exit wants 7 after the first draft token...
    logits[0, 3] = 4.0  # ... and prefers 3 to the draft's 2 among the candidates
    candidates = torch.tensor([[2, 3], [4, 5]])
    verdict, _ = candidate_verdict(logits[:2].gather(1, candidates), candidates, [2, 4])
    assert (verdict.accepted, verdict.next_token) == (0, 3)


def test_draft_token_is_put_first_in_its_row() -> None:
    assert with_draft_tokens(torch.tensor([[5, 6, 7], [1, 2, 3]]), [6, 9]).tolist() == [[6, 5, 7], [9, 1, 2]]
