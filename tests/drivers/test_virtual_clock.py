"""The virtual-clock driver with scripted backends (no models): every mode decodes the target's
text and finishes with the machine's reasons; the clock charges what the backends and the link
say; waiting verifies and decodes share one forward; a cancelled draft stops at its next token."""

from __future__ import annotations

from typing import Any, Sequence

import pytest

from edgespec.core.block import DraftBlock
from edgespec.core.config import GenerationConfig
from edgespec.core.edge_events import Draft, DraftKind
from edgespec.core.modes import Mode
from edgespec.core.verdict import Verdict
from edgespec.drivers.backend_interface import CloudJob, JobKind, VerifyResult
from edgespec.drivers.virtual_clock import ClientSpec, VirtualClock
from edgespec.drivers.virtual_devices import EventQueue, Link, VirtualEdge

PROMPT = [1, 2, 3]
TARGET = [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25]  # the target's greedy text
DECODE_S, VERIFY_S, PREFILL_S, DRAFT_TOKEN_S = 0.5, 0.6, 0.2, 0.05


def target_at(sequence: Sequence[int]) -> int:
    return TARGET[len(sequence) - len(PROMPT)]


class ScriptedEdge:
    """A draft that agrees with the target except at every fourth position."""

    def draft(self, sequence: Sequence[int], gamma: int, min_tokens: int = 1) -> tuple[DraftBlock, float]:
        tokens, text = [], list(sequence)
        for _ in range(gamma):
            position = len(text) - len(PROMPT)
            token = TARGET[position] if position % 4 != 3 and position < len(TARGET) else 99
            tokens.append(token)
            text.append(token)
        return DraftBlock(tokens), DRAFT_TOKEN_S * gamma


class ScriptedCloud:
    """The target as the script says it decides, at fixed costs; a batch costs its dearest job."""

    def __init__(self) -> None:
        self.batches: list[list[JobKind]] = []

    def open(self, session: int, sampling: Any, seed: int) -> None:
        pass

    def close(self, session: int) -> None:
        pass

    def run(self, jobs: list[CloudJob]) -> tuple[list[Any], float]:
        self.batches.append([job.kind for job in jobs])
        results: list[Any] = []
        for job in jobs:
            if job.kind is JobKind.PREFILL:
                results.append(None)
            elif job.kind is JobKind.DECODE:
                results.append(target_at(job.sequence))
            elif job.kind is JobKind.DRAFT:
                results.append(ScriptedEdge().draft(job.sequence, job.gamma)[0])
            else:
                assert job.block is not None
                accepted = 0
                while accepted < len(job.block.tokens) and job.block.tokens[accepted] == target_at(
                    job.sequence + job.block.tokens[:accepted]
                ):
                    accepted += 1
                results.append(
                    VerifyResult(Verdict(accepted, target_at(job.sequence + job.block.tokens[:accepted])), [])
                )
        costs = {
            JobKind.PREFILL: PREFILL_S,
            JobKind.DECODE: DECODE_S,
            JobKind.VERIFY: VERIFY_S,
            JobKind.DRAFT: DRAFT_TOKEN_S * 3,
        }
        return results, max(costs[job.kind] for job in jobs)


def run(mode: Mode, max_new_tokens: int, eos: frozenset[int] = frozenset(), link: Link = Link(), clients: int = 1):
    config = GenerationConfig(max_new_tokens=max_new_tokens, gamma=3, eos_ids=eos, draft_stop=0.0)
    cloud = ScriptedCloud()
    clock = VirtualClock(cloud)
    edge = ScriptedEdge() if mode.uses_draft else None
    results = clock.run([ClientSpec(list(PROMPT), mode, config, edge, link, eos_ids=eos) for _ in range(clients)])
    return results, clock, cloud


SPOKEN_MODES = [Mode.CLOUD_AR, Mode.SD, Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED, Mode.CLOUD_SD]


@pytest.mark.parametrize("mode", SPOKEN_MODES, ids=lambda m: m.value)
def test_every_mode_decodes_the_targets_text_and_stops_at_the_budget(mode: Mode) -> None:
    (result,), _, _ = run(mode, max_new_tokens=9, link=Link(one_way_s=0.01))
    assert result.tokens == TARGET[:9] and result.stats.finish_reason == "length"


@pytest.mark.parametrize("mode", SPOKEN_MODES, ids=lambda m: m.value)
def test_every_mode_stops_right_after_eos(mode: Mode) -> None:
    (result,), _, _ = run(mode, max_new_tokens=12, eos=frozenset({15}))
    assert result.tokens == TARGET[: TARGET.index(15) + 1] and result.stats.finish_reason == "eos"


def test_the_clock_charges_the_link_the_prefill_and_each_decode() -> None:
    (result,), clock, _ = run(Mode.CLOUD_AR, max_new_tokens=4, link=Link(one_way_s=0.1))
    # Open crosses the link, the prompt is prefilled, four decodes run back to back, and the last
    # token crosses back.
    assert result.stats.total_s == pytest.approx(0.1 + PREFILL_S + 4 * DECODE_S + 0.1)
    assert clock.wall_s == pytest.approx(result.stats.total_s)
    assert result.stats.ttft_s == pytest.approx(0.1 + PREFILL_S + DECODE_S + 0.1)


def test_a_speculative_round_costs_a_draft_a_round_trip_and_a_verify() -> None:
    (result,), _, _ = run(Mode.SD, max_new_tokens=3, link=Link(one_way_s=0.1))
    # The first block is drafted while Open crosses and the prompt is prefilled; it leaves when
    # the session opens, and its verdict (all three accepted, within the budget) ends the text.
    opened = max(0.1 + PREFILL_S + 0.1, 3 * DRAFT_TOKEN_S)
    assert result.tokens == TARGET[:3]
    assert result.stats.total_s == pytest.approx(opened + 0.1 + VERIFY_S + 0.1)
    assert result.stats.rounds == 1 and result.stats.accepted == 3


def test_waiting_decodes_of_many_sessions_share_one_forward() -> None:
    results, clock, cloud = run(Mode.CLOUD_AR, max_new_tokens=4, clients=3)
    assert all(r.tokens == TARGET[:4] for r in results)
    jobs = sum(len(batch) for batch in cloud.batches)
    assert clock.verifier.forwards == len(cloud.batches) < jobs
    assert all(
        batch == [JobKind.PREFILL] for batch in cloud.batches if JobKind.PREFILL in batch
    )  # a prefill runs alone
    assert max(len(batch) for batch in cloud.batches) == 3


def test_a_cancelled_draft_stops_at_its_next_token_and_is_never_delivered() -> None:
    events = EventQueue()
    edge = VirtualEdge(events, ScriptedEdge())
    delivered: list[tuple[int, float, float]] = []
    first = Draft(0, list(PROMPT), 4, 0, DraftKind.PRE_DRAFT)
    second = Draft(1, list(PROMPT), 2, 0, DraftKind.DRAFT)
    edge.submit(first, lambda block, start, end: delivered.append((0, start, end)))
    edge.submit(second, lambda block, start, end: delivered.append((1, start, end)))
    events.at(0.07, lambda: edge.cancel(first.id))
    events.run()
    # The first was 4 tokens of 0.05 s: cancelled at 0.07, it stops 0.05 s later; the second follows.
    assert delivered == [(1, pytest.approx(0.12), pytest.approx(0.12 + 2 * DRAFT_TOKEN_S))]
