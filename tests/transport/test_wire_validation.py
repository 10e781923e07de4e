"""Client messages are checked before anything is computed: each fault gets its own error code."""

from __future__ import annotations

import math

import pytest
import torch

from edgespec.core.config import SamplingParams
from edgespec.transport import edgespec_pb2 as pb
from edgespec.transport.codec import (
    ProtocolError,
    distributions_from_wire,
    distributions_to_wire,
    sampling_from_wire,
    sampling_to_wire,
)
from edgespec.transport.validation import check_block, check_open

VOCAB = 96


def code_of(call, *args) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ProtocolError) as refused:
        call(*args)
    return pb.ErrorCode.Name(refused.value.code)


def row(ids: list[int], probs: list[float]) -> pb.SparseDistribution:
    return pb.SparseDistribution(ids=ids, probs=probs)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(),
        SamplingParams(temperature=0.7, top_k=30, top_p=0.9),
        SamplingParams(temperature=100.0),
        SamplingParams(temperature=0.001),
    ],
)
def test_every_sampling_the_client_can_send_is_accepted_unchanged(params: SamplingParams) -> None:
    assert sampling_from_wire(sampling_to_wire(params)) == params


def test_top_p_zero_means_off_and_a_huge_top_k_filters_nothing() -> None:
    assert sampling_from_wire(pb.Sampling(temperature=1.0, top_p=0.0)).top_p == 1.0
    assert sampling_from_wire(pb.Sampling(temperature=1.0, top_k=2**32 - 1)).top_k == 2**32 - 1


@pytest.mark.parametrize(
    "temperature, top_p",
    [
        (-0.5, 1.0),
        (math.nan, 1.0),
        (math.inf, 1.0),
        (1e-6, 1.0),
        (1000.0, 1.0),
        (1.0, -0.1),
        (1.0, 1.5),
        (1.0, math.nan),
        (1.0, math.inf),
    ],
)
def test_sampling_out_of_range_is_a_bad_request(temperature: float, top_p: float) -> None:
    assert code_of(sampling_from_wire, pb.Sampling(temperature=temperature, top_p=top_p)) == "BAD_REQUEST"


def test_draft_distributions_round_trip_through_the_wire() -> None:
    probs = torch.zeros(2, VOCAB)
    probs[0, [3, 9]] = torch.tensor([0.25, 0.75])
    probs[1, 50] = 1.0
    assert torch.equal(distributions_from_wire(distributions_to_wire(probs), VOCAB), probs)


@pytest.mark.parametrize(
    "bad_row, code",
    [
        (row([1, 2], [1.0]), "BAD_REQUEST"),  # ids and probs differ in length
        (row([], []), "BAD_REQUEST"),
        (row([1, VOCAB], [0.5, 0.5]), "OUT_OF_VOCABULARY"),
        (row([4, 4], [0.5, 0.5]), "BAD_REQUEST"),  # one token twice
        (row([1, 2], [math.nan, 1.0]), "BAD_REQUEST"),
        (row([1, 2], [-0.5, 1.5]), "BAD_REQUEST"),
        (row([1, 2], [math.inf, 0.0]), "BAD_REQUEST"),
        (row([1, 2], [0.0, 0.0]), "BAD_REQUEST"),
        (row([1, 2], [0.9, 0.9]), "BAD_REQUEST"),  # sums to 1.8
        (row([1, 2], [0.1, 0.1]), "BAD_REQUEST"),  # sums to 0.2
    ],
)
def test_a_draft_row_that_is_no_distribution_is_refused(bad_row: pb.SparseDistribution, code: str) -> None:
    assert code_of(distributions_from_wire, [row([7], [1.0]), bad_row], VOCAB) == code


def test_a_well_formed_block_passes() -> None:
    check_block(pb.DraftBlock(round=0, tokens=[1, 2, 3]), VOCAB, 8, greedy=True)
    rows = [row([1, 5], [0.5, 0.5]), row([2], [1.0])]
    check_block(pb.DraftBlock(round=0, tokens=[1, 2], probs=rows), VOCAB, 8, greedy=False)


@pytest.mark.parametrize(
    "block, greedy, code",
    [
        (pb.DraftBlock(tokens=[]), True, "BAD_REQUEST"),
        (pb.DraftBlock(tokens=[1] * 9), True, "TOO_LARGE"),
        (pb.DraftBlock(tokens=[1, VOCAB + 5]), True, "OUT_OF_VOCABULARY"),
        (pb.DraftBlock(tokens=[1], probs=[row([1], [1.0])]), True, "BAD_REQUEST"),  # greedy blocks carry no rows
        (pb.DraftBlock(tokens=[1, 2], probs=[row([1], [1.0])]), False, "BAD_REQUEST"),  # one row short
        (pb.DraftBlock(tokens=[1], probs=[row([1], [1.0])] * 2), False, "BAD_REQUEST"),  # one row too many
        (pb.DraftBlock(tokens=[1], probs=[row([1], [math.nan])]), False, "BAD_REQUEST"),
        (pb.DraftBlock(tokens=[1], probs=[row([VOCAB], [1.0])]), False, "OUT_OF_VOCABULARY"),
    ],
)
def test_a_malformed_block_gets_its_specific_code(block: pb.DraftBlock, greedy: bool, code: str) -> None:
    assert code_of(check_block, block, VOCAB, 8, greedy) == code


def test_a_tagged_block_is_checked_like_any_other() -> None:
    block = pb.DraftBlock(round=1, tokens=[VOCAB], assumes=pb.Assumption(round=0, accepted=1, next_token=3))
    assert code_of(check_block, block, VOCAB, 8, True) == "OUT_OF_VOCABULARY"


def test_committed_ids_may_not_exceed_max_new_tokens() -> None:
    check_open(pb.Open(max_new_tokens=4, committed_ids=[1, 2, 3, 4]), 32)
    assert code_of(check_open, pb.Open(max_new_tokens=4, committed_ids=[1] * 5), 32) == "TOO_LARGE"
    assert code_of(check_open, pb.Open(max_new_tokens=2**32 - 1, committed_ids=[1] * 33), 32) == "TOO_LARGE"
    check_open(pb.Open(max_new_tokens=4, draft_stop=0.4), 32)
    for stop in (-0.1, 1.0, float("nan")):
        assert code_of(check_open, pb.Open(max_new_tokens=4, draft_stop=stop), 32) == "BAD_REQUEST"


def candidate_block(rows: list[list[int]], tokens: list[int] | None = None) -> pb.DraftBlock:
    return pb.DraftBlock(round=0, tokens=tokens or [1, 2], candidates=[pb.CandidateIds(ids=ids) for ids in rows])


def test_candidate_ids_are_optional_and_checked_when_sent() -> None:
    check_block(candidate_block([]), VOCAB, 16, greedy=True)
    check_block(candidate_block([[1, 5, 6], [2, 7, 8]]), VOCAB, 16, greedy=True)
    assert code_of(check_block, candidate_block([[1, 5]]), VOCAB, 16, True) == "BAD_REQUEST"  # one row per token
    assert code_of(check_block, candidate_block([[1, 5], []]), VOCAB, 16, True) == "BAD_REQUEST"
    assert code_of(check_block, candidate_block([[1, 5], list(range(65))]), VOCAB, 16, True) == "BAD_REQUEST"
    assert code_of(check_block, candidate_block([[1, VOCAB], [2, 3]]), VOCAB, 16, True) == "OUT_OF_VOCABULARY"


def test_candidate_ids_round_trip_and_ragged_rows_keep_their_likeliest_ids() -> None:
    from edgespec.transport.codec import candidates_from_wire, candidates_to_wire

    ids = torch.tensor([[1, 5, 6], [2, 7, 8]])
    assert torch.equal(candidates_from_wire(candidates_to_wire(ids)), ids)
    assert candidates_from_wire(candidates_to_wire(None)) is None
    ragged = [pb.CandidateIds(ids=[1, 5, 6]), pb.CandidateIds(ids=[2, 7])]
    assert candidates_from_wire(ragged).tolist() == [[1, 5], [2, 7]]
