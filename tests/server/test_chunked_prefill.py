"""Prefills in the batch, and rounds kept in step (tiny random models, fp32).

Scheduler-level tests run the compute loop pass by pass (``autostart=False``, ``run_pass``) in
lockstep: before each pass every live session has queued its next job, so what each pass holds
is decided by the scheduling policy alone, not by thread timing. Round times are counted in
passes (``JobResult.waited_passes``): deterministic, no clocks.
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import time
from typing import Awaitable, Callable

import pytest
import torch

from edgespec.client.edge_client import EdgeClient
from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.models.draft import DraftRuntime
from edgespec.models.kv import TrackedCache
from edgespec.models.target import ScoreRequest, TargetRuntime
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.jobs import Job, JobResult
from edgespec.server.limits import AdmissionLimits
from edgespec.server.pass_thread import BatchScheduler
from edgespec.server.servicer import VerifierService
from tests.support.tiny_models import VOCAB, greedy_reference, layer_skip_copy, tiny_model

MAX_PASSES = 400  # every lockstep run ends long before this; a starving policy hits it


def prompt(length: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1, VOCAB) for _ in range(length)]


class Lockstep:
    """Sessions as coroutines on one event loop; ``drive`` runs a pass only once every live
    session has its next job queued."""

    def __init__(self, scheduler: BatchScheduler) -> None:
        self.scheduler = scheduler
        self.changed = asyncio.Condition()
        self.live = 0

    async def submit(self, job: Job) -> JobResult:
        future = self.scheduler.enqueue(job)
        async with self.changed:
            self.changed.notify_all()
        return await future

    async def drive(self, sessions: list[Callable[[], Awaitable[None]]]) -> int:
        async def tracked(session: Callable[[], Awaitable[None]]) -> None:
            try:
                await session()
            finally:
                async with self.changed:
                    self.live -= 1
                    self.changed.notify_all()

        self.live = len(sessions)
        tasks = [asyncio.create_task(tracked(s)) for s in sessions]
        passes = 0
        while self.live:
            async with self.changed:
                await asyncio.wait_for(self.changed.wait_for(lambda: self.scheduler.queued >= self.live), 10)
            if not self.live:
                break
            assert passes < MAX_PASSES, f"sessions still running after {MAX_PASSES} passes: starved"
            self.scheduler.run_pass()
            passes += 1
        await asyncio.gather(*tasks)  # re-raises a session's failure
        return passes


def verify_rounds(
    lockstep: Lockstep, kv: TrackedCache, sequence: list[int], rounds: int, gamma: int, seed: int, times: list[int]
) -> Callable[[], Awaitable[None]]:
    """A speculative session after its prefill: blocks of ``gamma`` random draft tokens, greedy
    verdicts (accepted prefix + the target's next token), the cache rolled back after each."""
    rng = random.Random(seed)

    async def run() -> None:
        for _ in range(rounds):
            block = [rng.randrange(1, VOCAB) for _ in range(gamma)]
            result = await lockstep.submit(
                Job(ScoreRequest(sequence + block, gamma + 1, kv), lambda logits: logits.argmax(-1).tolist())
            )
            choices = result.value
            accepted = 0
            while accepted < gamma and block[accepted] == choices[accepted]:
                accepted += 1
            sequence.extend(block[:accepted] + [choices[accepted]])
            kv.sync(sequence, keep_uncached=1)  # roll back to the committed text
            times.append(result.waited_passes + 1)

    return run


def prefill_job(sequence: list[int], kv: TrackedCache) -> Job[torch.Tensor]:
    return Job(ScoreRequest(sequence[:-1], 1, kv), finish=lambda logits: logits, prefill=True)


def test_chunked_prefill_riding_with_other_sessions_rounds_equals_a_lone_prefill() -> None:
    runtime = TargetRuntime(tiny_model("qwen2", seed=0))
    alone = TargetRuntime(tiny_model("qwen2", seed=0))
    scheduler = BatchScheduler(runtime, AdmissionLimits(prefill_chunk=8, max_batch_rows=24), autostart=False)
    long_prompt = prompt(45, seed=1)
    got: dict[str, torch.Tensor] = {}

    async def main() -> int:
        lockstep = Lockstep(scheduler)
        others = []
        for index in range(3):  # sessions already decoding when the long prompt arrives
            sequence = prompt(6, seed=10 + index)
            kv = runtime.new_cache()
            runtime.score_tail(sequence[:-1], 1, kv=kv)
            others.append(verify_rounds(lockstep, kv, sequence, rounds=12, gamma=3, seed=index, times=[]))

        async def newcomer() -> None:
            kv = runtime.new_cache()
            got["prefill"] = (await lockstep.submit(prefill_job(long_prompt, kv))).value
            got["kv"] = kv  # type: ignore[assignment]
            block = [5, 6, 7]
            got["verify"] = (
                await lockstep.submit(Job(ScoreRequest(long_prompt + block, 4, kv), lambda logits: logits))
            ).value

        return await lockstep.drive([*others, newcomer])

    asyncio.run(main())
    lone_kv = alone.new_cache()
    torch.testing.assert_close(got["prefill"], alone.score_tail(long_prompt[:-1], 1, kv=lone_kv), rtol=1e-4, atol=1e-4)
    chunked_kv: TrackedCache = got["kv"]  # type: ignore[assignment]
    # The cache after the verify holds prompt + block; compare it with the lone one's.
    torch.testing.assert_close(
        got["verify"], alone.score_tail(long_prompt + [5, 6, 7], 4, kv=lone_kv), rtol=1e-4, atol=1e-4
    )
    assert chunked_kv.tokens == lone_kv.tokens == long_prompt + [5, 6, 7]
    for (keys, values), (lone_keys, lone_values) in zip(chunked_kv.layer_tensors(), lone_kv.layer_tensors()):
        torch.testing.assert_close(keys, lone_keys, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(values, lone_values, rtol=1e-4, atol=1e-4)
    passes = list(scheduler.stats.recent)
    # 44 prompt tokens in chunks: several passes, some shared with the other sessions' rounds.
    assert scheduler.stats.prefill_tokens == 44
    assert sum(p.prefill_rows for p in passes) >= 44 // 8
    assert any(p.prefill_rows and p.rows > p.prefill_rows for p in passes), "no chunk rode with a round"


def fairness_run(
    limits: AdmissionLimits, sessions: int, prompt_tokens: list[int], rounds: int
) -> tuple[list[list[int]], BatchScheduler]:
    runtime = TargetRuntime(tiny_model("qwen2", seed=0))
    scheduler = BatchScheduler(runtime, limits, autostart=False)
    times: list[list[int]] = [[] for _ in range(sessions)]

    async def main() -> None:
        lockstep = Lockstep(scheduler)

        def session(index: int) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                sequence = prompt(prompt_tokens[index], seed=100 + index)
                kv = runtime.new_cache()
                await lockstep.submit(prefill_job(sequence, kv))
                await verify_rounds(lockstep, kv, sequence, rounds, gamma=4, seed=index, times=times[index])()

            return run

        await lockstep.drive([session(i) for i in range(sessions)])

    asyncio.run(main())
    return times, scheduler


def p90(values: list[int]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def test_fairness_no_sessions_p90_round_time_exceeds_twice_the_median_under_equal_load() -> None:
    # 6 equal sessions, a budget for 3 verify rows of 5 tokens: every pass serves half of them.
    times, scheduler = fairness_run(
        AdmissionLimits(prefill_chunk=8, max_batch_rows=15), sessions=6, prompt_tokens=[20] * 6, rounds=10
    )
    median = statistics.median(t for session in times for t in session)
    for index, session in enumerate(times):
        assert len(session) == 10
        assert p90(session) <= 2 * median, (
            f"session {index}: p90 round time {p90(session)} passes > 2 x median {median}: {session}"
        )
    # Oldest first: a round put off by the budget goes in the next pass, or (while prompts are
    # still being fed) the one after a prefill's turn: never three.
    assert max(scheduler.stats.waited_passes) <= 2, dict(scheduler.stats.waited_passes)
    # Every pass respected its budget (plus, at most, the one row a waiting prefill is owed).
    assert all(p.padded_tokens <= 15 + 5 for p in scheduler.stats.recent)


@pytest.mark.parametrize("chunk", [8, 0], ids=["chunked", "solo"])
def test_a_long_prompt_arriving_among_decoding_sessions_does_not_stall_their_rounds(chunk: int) -> None:
    # 4 sessions with short prompts decode; a fifth brings 60 prompt tokens. Solo, its prefill
    # runs alone when it is the oldest job and every round waits for it; chunked, it rides at the
    # rounds' width within the budget (4 rows of 5 = 20) and no round waits for anything.
    limits = AdmissionLimits(prefill_chunk=chunk, max_batch_rows=20)
    times, scheduler = fairness_run(limits, sessions=5, prompt_tokens=[4, 4, 4, 4, 61], rounds=12)
    assert all(len(session) == 12 for session in times)
    waited = dict(scheduler.stats.waited_passes)
    if chunk:
        assert scheduler.stats.prefill_chunks > 60 // 8, "the long prompt was not fed in chunks"
        longest_pass = max(p.padded_tokens for p in scheduler.stats.recent)
        assert longest_pass <= 20 + 5, f"a pass of {longest_pass} padded token-rows"
        assert max(waited) <= 1, waited
    else:
        assert max(p.padded_tokens for p in scheduler.stats.recent) >= 60  # the whole prompt in one pass
        assert max(waited) >= 1, waited


def test_a_prompt_among_decoding_sessions_advances_a_full_chunk_every_other_pass() -> None:
    # Decode rounds feed 1 token: a chunk riding at their width would feed 1 token a pass; the
    # prefill's turns (full chunk of 8) finish 60 prompt tokens in about 2 x 60 / 8 passes.
    limits = AdmissionLimits(prefill_chunk=8, max_batch_rows=20)
    runtime = TargetRuntime(tiny_model("qwen2", seed=0))
    scheduler = BatchScheduler(runtime, limits, autostart=False)
    prefill_passes: list[int] = []

    async def main() -> None:
        lockstep = Lockstep(scheduler)
        decoders = []
        for index in range(4):
            sequence = prompt(4, seed=300 + index)
            kv = runtime.new_cache()
            runtime.score_tail(sequence[:-1], 1, kv=kv)
            decoders.append(verify_rounds(lockstep, kv, sequence, rounds=40, gamma=0, seed=index, times=[]))

        async def newcomer() -> None:
            result = await lockstep.submit(prefill_job(prompt(61, seed=400), runtime.new_cache()))
            prefill_passes.append(result.passes)

        await lockstep.drive([*decoders, newcomer])

    asyncio.run(main())
    assert prefill_passes and prefill_passes[0] <= 2 * (60 // 8 + 1), f"the prompt took {prefill_passes[0]} passes"
    assert max(scheduler.stats.waited_passes) <= 1, dict(scheduler.stats.waited_passes)


def test_passes_report_rows_padding_and_prefill_tokens() -> None:
    _, scheduler = fairness_run(
        AdmissionLimits(prefill_chunk=8, max_batch_rows=40), sessions=3, prompt_tokens=[10, 17, 30], rounds=2
    )
    stats = scheduler.stats
    summary = stats.summary()
    assert summary["prefill_tokens"] == 9 + 16 + 29 == stats.prefill_tokens
    assert summary["forwards"] == stats.forwards == len(stats.recent)
    assert stats.fed_tokens == sum(p.fed_tokens for p in stats.recent) <= stats.padded_tokens
    assert sum(summary["rows_per_pass"].values()) == stats.forwards  # type: ignore[union-attr]
    assert stats.jobs == 3 + 3 * 2


# --- the real server, concurrent clients -------------------------------------------------


def test_concurrent_clients_with_chunked_prefills_each_equal_generate() -> None:
    target = tiny_model("qwen2", seed=0)
    reference = tiny_model("qwen2", seed=0)
    draft = layer_skip_copy(tiny_model("qwen2", seed=0), keep=3)
    service = VerifierService(
        TargetRuntime(target),
        tokenizer=None,
        eos_ids=frozenset(),
        admission=AdmissionLimits(prefill_chunk=6, max_batch_rows=24),
    )
    server = RunningServer(service, ServerConfig(port=0))
    address = f"127.0.0.1:{server.port}"
    modes = [Mode.SD, Mode.CLOUD_AR, Mode.SD_EE_PIPELINED, Mode.SD]
    cases = [prompt(14 + 9 * i, seed=200 + i) for i in range(8)]
    expected = [greedy_reference(reference, p, 12) for p in cases]

    async def run_all() -> list[list[int]]:
        async def one(index: int, tokens: list[int]) -> list[int]:
            client = EdgeClient(address, DraftRuntime(draft))
            config = GenerationConfig(max_new_tokens=12, gamma=2 + index % 3)
            return (await client.agenerate(tokens, modes[index % len(modes)], config)).tokens

        return await asyncio.gather(*(one(i, p) for i, p in enumerate(cases)))

    try:
        outputs = asyncio.run(run_all())
        for index, (got, want) in enumerate(zip(outputs, expected)):
            assert got == want, f"client {index} ({modes[index % len(modes)].value}) differs from generate"
        stats = service.scheduler.stats
        assert stats.prefill_tokens == sum(len(p) - 1 for p in cases)
        assert stats.prefill_chunks > len(cases)  # prompts of 14..77 tokens, 6 per chunk
        # Rounds of at most 5 tokens, 8 sessions, a budget of 24: a round put off once (at most 4
        # of them) is among the oldest and fits the next pass or the one after a prefill's turn,
        # whatever the threads' timing.
        assert max(stats.waited_passes) <= 2, dict(stats.waited_passes)
        deadline = time.monotonic() + 5
        while (service.sessions or len(service.runtime.live_caches)) and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.05)
        assert not service.sessions and len(service.runtime.live_caches) == 0
    finally:
        server.stop()
