"""The pass thread (``BatchScheduler``) driven pass by pass (``autostart=False``) over a fake
target that only records what each pass fed: which jobs share a pass, how a prefill is fed in
chunks, what a failure reaches, and what the statistics count."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Sequence

import pytest
import torch

from edgespec.models.target import ScoreRequest
from edgespec.server.jobs import Job, JobResult, prefill_chunk_request, unfed_tokens
from edgespec.server.limits import AdmissionLimits
from edgespec.server.pass_thread import BatchScheduler
from edgespec.server.refusals import Refused


class RecordingTarget:
    """Stands in for ``TargetRuntime``: a pass makes each cache hold its whole sequence (as
    ``kv.sync`` does) and returns one logits row per fed position."""

    def __init__(self, fail: bool = False) -> None:
        self.passes: list[list[list[int]]] = []  # per pass, per row: the sequence scored
        self.fail = fail

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[torch.Tensor]:
        if self.fail:
            raise RuntimeError("the forward failed")
        self.passes.append([list(r.sequence) for r in requests])
        for request in requests:
            request.kv.tokens = list(request.sequence)
        return [torch.zeros(request.tail, 1) for request in requests]


def cache(*held: int) -> SimpleNamespace:
    return SimpleNamespace(tokens=list(held))


def round_job(sequence: list[int], value: str, tail: int = 1) -> Job[str]:
    return Job(ScoreRequest(sequence, tail, cache()), finish=lambda logits: value)


def prefill_job(sequence: list[int]) -> Job[None]:
    return Job(ScoreRequest(sequence, 1, cache()), finish=lambda logits: None, prefill=True)


def scheduler(target: RecordingTarget, **limits: int) -> BatchScheduler:
    return BatchScheduler(target, AdmissionLimits(**limits), autostart=False)  # type: ignore[arg-type]


async def settle(futures: Sequence[asyncio.Future]) -> list[object]:
    return await asyncio.gather(*futures, return_exceptions=True)


def test_jobs_queued_together_ride_in_one_pass_and_each_gets_its_own_result() -> None:
    async def run() -> None:
        target = RecordingTarget()
        passes = scheduler(target)
        futures = [passes.enqueue(round_job([1, 2, 3], "a")), passes.enqueue(round_job([4, 5], "b"))]
        assert passes.run_pass() == 2
        first, second = await settle(futures)
        assert isinstance(first, JobResult) and isinstance(second, JobResult)
        assert (first.value, second.value) == ("a", "b")
        assert first.batch_size == second.batch_size == 2 and first.passes == 1 and first.waited_passes == 0
        assert target.passes == [[[1, 2, 3], [4, 5]]]
        assert passes.stats.forwards == 1 and passes.stats.jobs == 2
        assert passes.stats.padded_tokens == 2 * 3 and passes.stats.fed_tokens == 3 + 2

    asyncio.run(run())


def test_a_prefill_is_fed_in_chunks_over_passes_and_finishes_with_its_last() -> None:
    async def run() -> None:
        target = RecordingTarget()
        passes = scheduler(target, prefill_chunk=4)
        future = passes.enqueue(prefill_job(list(range(1, 11))))
        ran = [passes.run_pass() for _ in range(3)]
        (result,) = await settle([future])
        assert ran == [1, 1, 1]
        assert [rows[0] for rows in target.passes] == [[1, 2, 3, 4], list(range(1, 9)), list(range(1, 11))]
        assert isinstance(result, JobResult) and result.passes == 3
        assert passes.stats.prefill_chunks == 3 and passes.stats.prefill_tokens == 4 + 4 + 2
        assert passes.stats.jobs == 1 and passes.queued == 0

    asyncio.run(run())


def test_a_standalone_job_runs_in_a_pass_of_its_own_and_forwards_wait_for_the_next() -> None:
    async def run() -> None:
        target = RecordingTarget()
        passes = scheduler(target)
        alone = passes.enqueue(Job.standalone(lambda: "drafted"))
        forward = passes.enqueue(round_job([7, 8], "verified"))
        assert passes.run_pass() == 1
        assert target.passes == [] and passes.queued == 1
        assert passes.run_pass() == 1
        alone_result, forward_result = await settle([alone, forward])
        assert alone_result.value == "drafted" and forward_result.value == "verified"  # type: ignore[union-attr]
        assert forward_result.waited_passes == 1  # type: ignore[union-attr]
        assert passes.stats.forwards == 1  # a standalone job is not a target forward

    asyncio.run(run())


def test_a_failed_forward_fails_every_job_in_its_pass() -> None:
    async def run() -> None:
        passes = scheduler(RecordingTarget(fail=True))
        futures = [passes.enqueue(round_job([1, 2], "a")), passes.enqueue(round_job([3, 4], "b"))]
        passes.run_pass()
        outcomes = await settle(futures)
        assert all(isinstance(o, RuntimeError) and str(o) == "the forward failed" for o in outcomes)

    asyncio.run(run())


def test_a_failing_finish_fails_only_its_own_job() -> None:
    def broken(logits: torch.Tensor) -> str:
        raise ValueError("this session's bug")

    async def run() -> None:
        passes = scheduler(RecordingTarget())
        bad = passes.enqueue(Job(ScoreRequest([1, 2], 1, cache()), finish=broken))
        good = passes.enqueue(round_job([3, 4], "fine"))
        passes.run_pass()
        bad_outcome, good_outcome = await settle([bad, good])
        assert isinstance(bad_outcome, ValueError)
        assert isinstance(good_outcome, JobResult) and good_outcome.value == "fine"

    asyncio.run(run())


def test_a_full_queue_refuses_one_more_job_with_busy() -> None:
    async def run() -> None:
        passes = scheduler(RecordingTarget(), max_queued=1)
        passes.enqueue(round_job([1, 2], "a"))
        with pytest.raises(Refused) as refused:
            passes.enqueue(round_job([3, 4], "b"))
        assert refused.value.code == "BUSY"

    asyncio.run(run())


def test_a_cancelled_job_never_rides() -> None:
    async def run() -> None:
        target = RecordingTarget()
        passes = scheduler(target)
        gone = passes.enqueue(round_job([1, 2], "gone"))
        kept = passes.enqueue(round_job([3, 4], "kept"))
        gone.cancel()
        await asyncio.sleep(0)  # the cancellation's callback marks the job
        assert passes.run_pass() == 1
        assert target.passes == [[[3, 4]]]
        assert (await kept).value == "kept"

    asyncio.run(run())


def test_closing_cancels_what_is_still_queued() -> None:
    async def run() -> None:
        passes = scheduler(RecordingTarget())
        waiting = passes.enqueue(round_job([1, 2], "a"))
        passes.close()
        (outcome,) = await settle([waiting])
        assert isinstance(outcome, asyncio.CancelledError)
        with pytest.raises(Refused):
            passes.enqueue(round_job([3, 4], "b"))

    asyncio.run(run())


def test_unfed_tokens_counts_what_the_cache_does_not_hold_and_always_the_last() -> None:
    assert unfed_tokens(ScoreRequest([1, 2, 3, 4], 1, cache())) == 4
    assert unfed_tokens(ScoreRequest([1, 2, 3, 4], 1, cache(1, 2))) == 2
    assert unfed_tokens(ScoreRequest([1, 2, 3, 4], 1, cache(1, 2, 3, 4))) == 1  # its logits are needed
    assert unfed_tokens(ScoreRequest([1, 2, 3, 4], 3, cache(1, 2, 3, 4))) == 3  # a verify's tail
    assert unfed_tokens(ScoreRequest([1, 2, 3, 4], 1, cache(1, 9))) == 3  # diverged: fed again


def test_a_prefill_chunk_is_the_next_tokens_after_the_cache_and_the_last_is_the_request_itself() -> None:
    request = ScoreRequest(list(range(1, 11)), 1, cache(1, 2, 3))
    chunk, last = prefill_chunk_request(request, 4)
    assert list(chunk.sequence) == [1, 2, 3, 4, 5, 6, 7] and chunk.tail == 1 and chunk.kv is request.kv and not last
    rest, last = prefill_chunk_request(request, 7)
    assert rest is request and last
