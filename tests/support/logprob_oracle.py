"""Oracles for log-probabilities: what `transformers` says the target gives each token."""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import PreTrainedModel

from tests.support.tiny_models import greedy_generate


def generate_with_logprobs(
    model: PreTrainedModel, prompt: list[int], max_new_tokens: int, eos: int | None = None
) -> tuple[list[int], torch.Tensor]:
    """`generate`, greedy, with ``output_scores``: its tokens and each step's log-softmax [n, vocab]."""
    out = greedy_generate(model, prompt, max_new_tokens, eos, output_scores=True, return_dict_in_generate=True)
    tokens = out.sequences[0, len(prompt) :].tolist()
    return tokens, torch.log_softmax(torch.cat(out.scores).float(), dim=-1)


@torch.inference_mode()
def teacher_forced_logprobs(model: PreTrainedModel, prompt: list[int], tokens: Sequence[int]) -> torch.Tensor:
    """The target's log-softmax at every generated position [len(tokens), vocab], in one forward
    over prompt + tokens: the oracle for sampled text."""
    sequence = torch.tensor([list(prompt) + list(tokens)])
    logits = model(sequence).logits[0, len(prompt) - 1 : len(prompt) - 1 + len(tokens)]
    return torch.log_softmax(logits.float(), dim=-1)


def assert_logprobs_match(
    entries: Sequence, tokens: Sequence[int], oracle: torch.Tensor, top: int, atol: float = 1e-4
) -> None:
    """Each entry (a ``TokenLogprob``) is the oracle's log-probability of its token, and its
    alternatives are the oracle's ``top`` likeliest with theirs."""
    assert [entry.token for entry in entries] == list(tokens)
    for position, entry in enumerate(entries):
        row = oracle[position]
        assert abs(entry.logprob - float(row[entry.token])) <= atol, (position, entry.logprob, float(row[entry.token]))
        assert len(entry.top) == top
        values = torch.topk(row, top).values.tolist() if top else []
        assert [value for _, value in entry.top] == pytest_approx(values, atol)
        for token, value in entry.top:
            assert abs(value - float(row[token])) <= atol


def pytest_approx(values: list[float], atol: float):  # type: ignore[no-untyped-def]
    import pytest

    return pytest.approx(values, abs=atol)
