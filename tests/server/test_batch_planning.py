"""What the scheduler puts into one forward pass (``plan_pass``, pure): oldest rounds first within
a cost budget in padded token-rows, prefill chunks in what remains, no starvation."""

from __future__ import annotations

import pytest

from edgespec.server.limits import AdmissionLimits
from edgespec.server.planner import Candidate, Planned, plan_pass, prefill_turn_due


def rounds(*tokens: int) -> list[Candidate]:
    return [Candidate(prefill=False, tokens=t) for t in tokens]


def prefills(*tokens: int) -> list[Candidate]:
    return [Candidate(prefill=True, tokens=t) for t in tokens]


def padded(plan: list[Planned]) -> int:
    return len(plan) * max(p.tokens for p in plan)


def test_oldest_rounds_go_first_and_a_younger_round_never_overtakes_one_that_does_not_fit() -> None:
    # 2 x 5 fits a budget of 15; the third (9 tokens) would make 3 x 9: the pass stops there,
    # although the younger 3-token round would have fitted.
    plan = plan_pass(rounds(5, 5, 9, 3), max_rows=32, budget=15, prefill_chunk=32)
    assert plan == [Planned(0, 5), Planned(1, 5)]


def test_the_oldest_round_rides_even_when_it_alone_exceeds_the_budget() -> None:
    assert plan_pass(rounds(20, 5), max_rows=32, budget=8, prefill_chunk=32) == [Planned(0, 20)]


def test_rows_are_capped() -> None:
    assert [p.index for p in plan_pass(rounds(*[5] * 10), max_rows=4, budget=1000, prefill_chunk=32)] == [0, 1, 2, 3]


def test_prefill_chunks_alone_fill_the_budget_oldest_prompt_first() -> None:
    plan = plan_pass(prefills(100, 100, 100), max_rows=32, budget=64, prefill_chunk=32)
    assert plan == [Planned(0, 32), Planned(1, 32)]
    # A budget below one chunk shrinks the chunk instead of stalling the prompt.
    assert plan_pass(prefills(100), max_rows=32, budget=20, prefill_chunk=32) == [Planned(0, 20)]
    # The last chunk is what is left of the prompt.
    assert plan_pass(prefills(10), max_rows=32, budget=64, prefill_chunk=32) == [Planned(0, 10)]


def test_rounds_go_before_older_prefills_and_a_chunk_fills_what_budget_remains() -> None:
    candidates = prefills(100) + rounds(5, 5)  # the prefill is older
    plan = plan_pass(candidates, max_rows=32, budget=96, prefill_chunk=32)
    assert plan == [Planned(1, 5), Planned(2, 5), Planned(0, 32)]
    assert padded(plan) == 96


def test_a_chunk_that_would_widen_the_pass_past_its_budget_rides_at_the_rounds_width() -> None:
    # 4 verify rows of 5 tokens: a 32-token chunk would make 5 x 32 = 160 padded token-rows.
    plan = plan_pass(rounds(5, 5, 5, 5) + prefills(100, 100, 100), max_rows=32, budget=30, prefill_chunk=32)
    assert plan == [Planned(0, 5), Planned(1, 5), Planned(2, 5), Planned(3, 5), Planned(4, 5), Planned(5, 5)]
    assert padded(plan) == 30  # a third prefill row would make 7 x 5 = 35: it waits


def test_the_oldest_prefill_progresses_even_when_rounds_fill_the_budget() -> None:
    plan = plan_pass(rounds(*[5] * 6) + prefills(100), max_rows=32, budget=30, prefill_chunk=32)
    assert plan[-1] == Planned(6, 5)
    assert padded(plan) == 30 + 5  # over budget by exactly that one row, no padding added
    # With rows capped, one row is kept for it.
    plan = plan_pass(rounds(*[5] * 5) + prefills(50), max_rows=3, budget=1000, prefill_chunk=32)
    assert [p.index for p in plan] == [0, 1, 5]


def test_one_row_per_pass_serves_rounds_and_chunks_by_age() -> None:
    assert plan_pass(prefills(100) + rounds(5), max_rows=1, budget=64, prefill_chunk=32) == [Planned(0, 32)]
    assert plan_pass(rounds(5) + prefills(100), max_rows=1, budget=64, prefill_chunk=32) == [Planned(0, 5)]


def test_prefill_chunk_0_runs_a_whole_prompt_alone_when_it_is_the_oldest_job() -> None:
    assert plan_pass(prefills(300) + rounds(5, 5), max_rows=32, budget=64, prefill_chunk=0) == [Planned(0, 300)]
    # Not the oldest: the rounds go (without it), as before chunking existed.
    assert plan_pass(rounds(5, 5) + prefills(300), max_rows=32, budget=64, prefill_chunk=0) == [
        Planned(0, 5),
        Planned(1, 5),
    ]


def test_nothing_queued_plans_nothing() -> None:
    assert plan_pass([], max_rows=32, budget=64, prefill_chunk=32) == []


@pytest.mark.parametrize("field", ["max_batch_rows", "max_batch", "max_sessions"])
def test_a_zero_budget_or_cap_is_refused(field: str) -> None:
    with pytest.raises(ValueError, match=">= 1"):
        AdmissionLimits(**{field: 0})


def test_a_negative_chunk_is_refused() -> None:
    with pytest.raises(ValueError, match="prefill_chunk"):
        AdmissionLimits(prefill_chunk=-1)


def test_a_prefills_turn_feeds_its_full_chunk_first_and_what_fits_at_that_width() -> None:
    candidates = rounds(1, 1, 1) + prefills(100, 100)
    plan = plan_pass(candidates, max_rows=32, budget=64, prefill_chunk=32, prefill_turn=True)
    assert plan == [Planned(3, 32), Planned(0, 1)]  # 3 x 32 > 64: the other rounds wait one pass
    # Without its turn the prompt would ride at the decode rows' width: 1 token.
    assert plan_pass(candidates, max_rows=32, budget=64, prefill_chunk=32)[3] == Planned(3, 1)


def test_a_prefills_turn_is_due_only_after_every_waiting_round_rode() -> None:
    candidates = rounds(1, 1, 1) + prefills(100)
    narrow = plan_pass(candidates, max_rows=32, budget=64, prefill_chunk=32)
    assert prefill_turn_due(candidates, narrow, prefill_chunk=32)
    # A round put off by the budget keeps priority.
    tight = rounds(5, 5, 5) + prefills(100)
    plan = plan_pass(tight, max_rows=32, budget=10, prefill_chunk=32)
    assert [p.index for p in plan] == [0, 1, 3]
    assert not prefill_turn_due(tight, plan, prefill_chunk=32)
    # A full chunk, or solo prefills: no turn.
    full = plan_pass(rounds(5) + prefills(100), max_rows=32, budget=64, prefill_chunk=32)
    assert not prefill_turn_due(rounds(5) + prefills(100), full, prefill_chunk=32)
    assert not prefill_turn_due(candidates, narrow, prefill_chunk=0)


def test_an_accelerator_target_batches_prefill_chunks_by_default_and_a_cpu_target_does_not() -> None:
    assert AdmissionLimits.batch_budget("cpu", 32, None, None) == (0, 512)
    assert AdmissionLimits.batch_budget("cuda", 32, None, None) == (128, 32 * 128)
    assert AdmissionLimits.batch_budget("cuda:1", 4, None, None) == (128, 512)  # never below the CPU budget
    # What the operator sets wins, on either device.
    assert AdmissionLimits.batch_budget("cuda", 32, 0, None) == (0, 512)
    assert AdmissionLimits.batch_budget("cuda", 32, 64, 1000) == (64, 1000)
    assert AdmissionLimits.batch_budget("cpu", 32, 64, None) == (64, 512)
