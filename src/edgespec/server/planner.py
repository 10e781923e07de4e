"""Pass planning: which of the queued jobs ride in the next batched forward of the one shared
target model, and how many tokens each feeds. Pure and standard library only: the pass thread
(``pass_thread.py``) asks, and runs what it is told.

Each session has at most one job in flight (it waits for its verdict before the next block), so
whatever is queued when the model frees up is at most one job per waiting session. Nothing waits
for a batch to fill (no added latency at low load); under load the batch grows by itself, because
sessions queue up while the previous forward runs.

What goes into a pass (``plan_pass``):

1. **Rounds** (verify and decode jobs), oldest first, while the pass stays within its cost budget.
   A batch is a left-padded rectangle, and padding costs compute like real tokens, so the budget
   counts **padded token-rows**: rows x the longest row's fed tokens (``max_batch_rows``). The
   oldest round always goes; the first that does not fit stops the pass, so a younger round never
   overtakes an older one, and a round skipped once is among the oldest next time.
2. **Prefill chunks** fill what budget remains, oldest prefill first: a prompt is fed
   ``prefill_chunk`` tokens at a time, its cache growing pass by pass; the last chunk completes
   the prefill. Where a full chunk would widen the pass past its budget, the chunk rides at the
   width the pass's rounds already have (no padding added: on a compute-bound CPU a 5-token
   verify row padded to a 32-token chunk costs what 32 tokens cost). Chunks yield to rounds, but
   the oldest waiting prefill gets a chunk in every pass (one row is kept for it), and when that
   was less than a full chunk while every waiting round rode, the next pass is the prefill's
   **turn**: its full chunk first, then whatever else fits at that width, oldest first. So a
   round waits for at most the pass in flight plus one prefill turn (while the budget holds every
   waiting round), and a prompt advances a full chunk every other pass unless rounds alone fill
   the budget.

``prefill_chunk = 0`` keeps the old behaviour: a prefill runs alone, the whole prompt in one pass,
when it is the oldest job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Candidate:
    """A queued job as the planner sees it: a round, or a prefill with ``tokens`` still to feed."""

    prefill: bool
    tokens: int


@dataclass(frozen=True)
class Planned:
    """One row of a planned pass: which candidate, and how many of its tokens it feeds."""

    index: int  # into the candidates
    tokens: int  # fed in this pass


def plan_pass(
    candidates: Sequence[Candidate], max_rows: int, budget: int, prefill_chunk: int, prefill_turn: bool = False
) -> list[Planned]:
    """Which of ``candidates`` (oldest first) ride in the next pass, and how many tokens each
    feeds: see the module docstring. ``budget`` is in padded token-rows. ``prefill_turn``: the
    oldest prefill goes first with a full chunk (``prefill_turn_due`` said the last pass gave it less)."""
    if not candidates:
        return []
    if prefill_chunk <= 0 and candidates[0].prefill:
        return [Planned(0, candidates[0].tokens)]  # a whole prompt, alone
    waiting_prefill = prefill_chunk > 0 and any(c.prefill for c in candidates)
    if waiting_prefill and prefill_turn:
        return _prefill_first(candidates, max_rows, budget, prefill_chunk)
    # A waiting prefill keeps one row (unless one row is all there is: then rounds and chunks
    # simply take turns by age).
    round_rows = max_rows - 1 if waiting_prefill and max_rows > 1 else max_rows
    if waiting_prefill and max_rows == 1:
        oldest = candidates[0]
        return [Planned(0, min(prefill_chunk, oldest.tokens, budget) if oldest.prefill else oldest.tokens)]
    chosen: list[Planned] = []
    longest = 0
    for index, candidate in enumerate(candidates):
        if candidate.prefill:
            continue
        if len(chosen) >= round_rows:
            break
        wider = max(longest, candidate.tokens)
        if chosen and (len(chosen) + 1) * wider > budget:
            break
        chosen.append(Planned(index, candidate.tokens))
        longest = wider
    if not waiting_prefill:
        return chosen
    first = True
    for index, candidate in enumerate(candidates):
        if not candidate.prefill:
            continue
        if len(chosen) >= max_rows:
            break
        rows = len(chosen) + 1
        size = min(prefill_chunk, candidate.tokens)
        if rows * max(longest, size) > budget:
            # A full chunk would widen the pass past its budget: ride at the width the rounds
            # already pay for (padding costs compute like tokens), or, in a pass of prefills
            # alone, take what the budget allows.
            size = min(candidate.tokens, longest if longest else budget)
            if not first and rows * max(longest, size) > budget:
                break  # the oldest prefill always rides (progress); the others only within budget
        chosen.append(Planned(index, size))
        longest = max(longest, size)
        first = False
    return chosen


def _prefill_first(candidates: Sequence[Candidate], max_rows: int, budget: int, prefill_chunk: int) -> list[Planned]:
    """The oldest prefill's full chunk (within the budget), then whatever else fits at that
    width, oldest first: a round waits at most this one pass, and rides in it if it fits."""
    first = next(index for index, candidate in enumerate(candidates) if candidate.prefill)
    longest = min(prefill_chunk, candidates[first].tokens, budget)
    chosen = [Planned(first, longest)]
    for index, candidate in enumerate(candidates):
        if index == first:
            continue
        size = min(prefill_chunk, candidate.tokens) if candidate.prefill else candidate.tokens
        if len(chosen) >= max_rows or (len(chosen) + 1) * max(longest, size) > budget:
            break
        chosen.append(Planned(index, size))
        longest = max(longest, size)
    return chosen


def prefill_turn_due(candidates: Sequence[Candidate], plan: Sequence[Planned], prefill_chunk: int) -> bool:
    """Whether the next pass is a prefill's turn: every waiting round rode in ``plan`` but a
    waiting prefill got less than a full chunk (or nothing). On a compute-bound CPU a chunk can
    only ride with rounds at their width (a decode row feeds 1 token), so without turns a prompt
    would crawl while others decode; rounds put off by the budget keep priority, so none waits
    two passes for a prefill."""
    if prefill_chunk <= 0:
        return False
    fed = {planned.index: planned.tokens for planned in plan}
    if any(not c.prefill and i not in fed for i, c in enumerate(candidates)):
        return False
    return any(c.prefill and fed.get(i, 0) < min(prefill_chunk, c.tokens) for i, c in enumerate(candidates))
