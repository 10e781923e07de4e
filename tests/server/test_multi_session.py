"""One server, many sessions: batched forwards over ragged per-session caches give the same
logits as one session at a time; 32 concurrent clients each get exactly `generate`'s output, with
more than one session per forward; closed, vanished, idle or excess sessions free their memory."""

from __future__ import annotations

import asyncio
import gc
import random
import threading
import time

import grpc
import pytest
import torch

from edgespec.client.edge_client import EdgeClient
from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.exits.heads import ExitHeads, ExitSpec
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import ScoreRequest, TargetRuntime
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.limits import AdmissionLimits, SessionLimits
from edgespec.server.servicer import VerifierService
from edgespec.transport import edgespec_pb2 as pb
from edgespec.transport import edgespec_pb2_grpc as pb_grpc
from edgespec.transport.codec import PROTOCOL_VERSION
from tests.support.tiny_models import VOCAB, greedy_reference, qwen2_layer_skip_draft, qwen2_target, tiny_model

NEW_TOKENS = 16
MODES = [Mode.CLOUD_AR, Mode.SD, Mode.SD_EE, Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED]


reference_model = qwen2_target
draft_model = qwen2_layer_skip_draft


def exits() -> ExitHeads:
    return ExitHeads([ExitSpec(2), ExitSpec(3)], reference_model().config.hidden_size)


def prompts(count: int) -> list[list[int]]:
    rng = random.Random(7)
    return [[rng.randrange(1, VOCAB) for _ in range(rng.randrange(2, 12))] for _ in range(count)]


def start_server(model: torch.nn.Module | None = None, **config: object) -> tuple[RunningServer, VerifierService]:
    service = VerifierService(
        TargetRuntime(model or tiny_model("qwen2", seed=0), exits()),
        tokenizer=None,
        eos_ids=frozenset(),
        limits=config.pop("limits", SessionLimits()),  # type: ignore[arg-type]
        admission=config.pop("admission", AdmissionLimits()),  # type: ignore[arg-type]
    )
    return RunningServer(service, ServerConfig(port=0)), service


def wait_until_freed(service: VerifierService, within_s: float) -> float:
    """Seconds until no session and no session cache is left; fails after ``within_s``."""
    start = time.monotonic()
    while time.monotonic() - start < within_s:
        gc.collect()
        if not service.sessions and len(service.runtime.live_caches) == 0:
            return time.monotonic() - start
        time.sleep(0.05)
    pytest.fail(
        f"{len(service.sessions)} sessions and {len(service.runtime.live_caches)} caches still alive after {within_s} s"
    )


def test_a_ragged_batch_scores_like_one_session_at_a_time() -> None:
    runtime = TargetRuntime(tiny_model("qwen2", seed=0), exits())
    alone = TargetRuntime(tiny_model("qwen2", seed=0), exits())
    sequences = [[3, 4, 5, 6, 7, 8, 9], [10, 11], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [5]]
    tails = [3, 1, 5, 1]
    caches = [runtime.new_cache() for _ in sequences]
    for cache, sequence in zip(caches, sequences):
        if len(sequence) > 3:  # different cached lengths, including none
            runtime.score_tail(sequence[:-2], 1, kv=cache)
    for round_index in range(2):
        batched_exits: dict[tuple[int, int], torch.Tensor] = {}
        requests = [
            ScoreRequest(seq, tail, cache, on_exit=lambda r, i=i: batched_exits.__setitem__((i, r.layer), r.logits))
            for i, (seq, tail, cache) in enumerate(zip(sequences, tails, caches))
        ]
        batched = runtime.score_batch(requests)
        for i, (sequence, tail) in enumerate(zip(sequences, tails)):
            single_exits: dict[int, torch.Tensor] = {}
            single = alone.score_tail(
                sequence, tail, on_exit=lambda r: single_exits.__setitem__(r.layer, r.logits), kv=alone.new_cache()
            )
            torch.testing.assert_close(batched[i], single, rtol=1e-4, atol=1e-4)
            for layer in (2, 3):
                torch.testing.assert_close(batched_exits[(i, layer)], single_exits[layer], rtol=1e-4, atol=1e-4)
            assert caches[i].tokens == list(sequence)
            assert caches[i].cache.get_seq_length() == len(sequence)
        sequences = [s + [20 + round_index, 30] for s in sequences]
        tails = [3] * len(sequences)


def test_a_batch_mixing_candidate_and_full_exits_reads_each_like_a_session_alone() -> None:
    """Rows with candidate ids get only those ids' exit logits, rows without get the whole
    vocabulary, in the same batched pass: each as a lone session's full reading says."""
    runtime = TargetRuntime(tiny_model("qwen2", seed=0), exits())
    alone = TargetRuntime(tiny_model("qwen2", seed=0), exits())
    sequences = [[3, 4, 5, 6, 7, 8, 9], [10, 11, 12, 13], [1, 2, 3, 4, 5, 6]]
    tails = [4, 3, 4]
    candidates = [
        torch.tensor([[6, 1, 2], [7, 40, 41], [8, 9, 50]]),
        None,
        torch.tensor([[4, 0, 95], [5, 6, 7], [6, 60, 61]]),
    ]
    readings: dict[tuple[int, int], object] = {}
    requests = [
        ScoreRequest(
            seq,
            tail,
            runtime.new_cache(),
            on_exit=lambda r, i=i: readings.__setitem__((i, r.layer), r),
            exit_candidates=ids,
        )
        for i, (seq, tail, ids) in enumerate(zip(sequences, tails, candidates))
    ]
    runtime.score_batch(requests)
    for i, (sequence, tail, ids) in enumerate(zip(sequences, tails, candidates)):
        single: dict[int, torch.Tensor] = {}
        alone.score_tail(sequence, tail, on_exit=lambda r: single.__setitem__(r.layer, r.logits), kv=alone.new_cache())
        for layer in (2, 3):
            reading = readings[(i, layer)]
            if ids is None:
                assert reading.candidate_ids is None  # type: ignore[attr-defined]
                torch.testing.assert_close(reading.logits, single[layer], rtol=1e-4, atol=1e-4)  # type: ignore[attr-defined]
            else:
                expected = single[layer][: ids.shape[0]].gather(1, ids)
                torch.testing.assert_close(reading.logits, expected, rtol=1e-4, atol=1e-4)  # type: ignore[attr-defined]


def test_32_concurrent_sessions_each_equal_generate_in_batched_forwards() -> None:
    server, service = start_server()
    address = f"127.0.0.1:{server.port}"
    cases = prompts(32)
    expected = [greedy_reference(reference_model(), prompt, NEW_TOKENS) for prompt in cases]

    async def run_all() -> list[list[int]]:
        async def one(index: int, prompt: list[int]) -> list[int]:
            client = EdgeClient(address, DraftRuntime(draft_model()))
            config = GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=1 + index % 5)
            return (await client.agenerate(prompt, MODES[index % len(MODES)], config)).tokens

        return await asyncio.gather(*(one(i, p) for i, p in enumerate(cases)))

    try:
        baseline = len(service.runtime.live_caches)
        outputs = asyncio.run(run_all())
        for index, (got, want) in enumerate(zip(outputs, expected)):
            assert got == want, f"session {index} ({MODES[index % len(MODES)].value}) differs from generate"
        ran = service.runtime.batch_sizes
        assert max(ran) > 1, f"no forward pass served more than one session: {dict(ran)}"
        assert service.scheduler.stats.jobs > service.scheduler.stats.forwards
        wait_until_freed(service, within_s=5)
        assert len(service.runtime.live_caches) == baseline == 0
    finally:
        server.stop()


async def _open_stream(
    address: str, prompt: list[int], kind: int = pb.SPECULATIVE
) -> tuple[grpc.aio.Channel, grpc.aio.StreamStreamCall, pb.ServerMessage]:
    channel = grpc.aio.insecure_channel(address)
    call = pb_grpc.VerifierStub(channel).Session()
    await call.write(
        pb.ClientMessage(
            open=pb.Open(protocol_version=PROTOCOL_VERSION, kind=kind, prompt_ids=prompt, max_new_tokens=64)
        )
    )
    return channel, call, await call.read()


class ForwardHold:
    """Parks the target's ``nth`` forward pass after its last layer until released: the test
    knows a forward is in flight (``started``) and for how long, without guessing with sleeps."""

    def __init__(self, model: torch.nn.Module, nth: int) -> None:
        self.nth, self.seen = nth, 0
        self.started, self.release = threading.Event(), threading.Event()
        model.model.layers[-1].register_forward_hook(self._hook)

    def _hook(self, *_args: object) -> None:
        self.seen += 1
        if self.seen == self.nth:
            self.started.set()
            self.release.wait(10)


@pytest.mark.parametrize("kind", [pb.SPECULATIVE, pb.CLOUD_AR], ids=["verify", "cloud-ar-decode"])
def test_a_client_that_vanishes_mid_round_frees_its_session_within_5_s(kind: int) -> None:
    model = tiny_model("qwen2", seed=0)
    # Forward 1 is the prompt's prefill; then the verify of the block (forward 2), or the
    # cloud-ar decodes, the first of which (forward 2) the test reads before vanishing.
    hold = ForwardHold(model, nth=2 if kind == pb.SPECULATIVE else 3)
    server, service = start_server(model)

    async def vanish() -> None:
        channel, call, opened = await _open_stream(f"127.0.0.1:{server.port}", [3, 17, 42], kind)
        assert opened.WhichOneof("kind") == "opened"
        if kind == pb.SPECULATIVE:
            await call.write(pb.ClientMessage(block=pb.DraftBlock(round=0, tokens=[5, 6, 7])))
        else:  # the server is decoding all 64 tokens inside the open
            assert (await call.read()).WhichOneof("kind") == "tokens"
        assert await asyncio.to_thread(hold.started.wait, 10), "no forward started"
        assert len(service.sessions) == 1  # a forward of this session is in flight, held
        call.cancel()
        await channel.close(grace=None)

    try:
        asyncio.run(vanish())
        hold.release.set()
        assert wait_until_freed(service, within_s=5) < 5
    finally:
        hold.release.set()
        server.stop()


def test_sessions_over_the_limit_are_refused_busy_and_others_are_unaffected() -> None:
    server, service = start_server(admission=AdmissionLimits(max_sessions=1))
    address = f"127.0.0.1:{server.port}"

    async def two() -> None:
        first_channel, first, opened = await _open_stream(address, [3, 17, 42])
        assert opened.WhichOneof("kind") == "opened"
        second_channel, _, refused = await _open_stream(address, [4, 5])
        assert refused.WhichOneof("kind") == "error" and refused.error.code == pb.BUSY
        assert "limit of 1 open sessions" in refused.error.message
        await first.write(pb.ClientMessage(block=pb.DraftBlock(round=0, tokens=[5])))
        assert (await first.read()).WhichOneof("kind") == "final"
        await first.write(pb.ClientMessage(close=pb.Close()))
        await first_channel.close()
        await second_channel.close()

    try:
        asyncio.run(two())
        wait_until_freed(service, within_s=5)
        assert EdgeClient(address, DraftRuntime(draft_model())).generate(
            [3, 17, 42], Mode.SD, GenerationConfig(max_new_tokens=8)
        ).tokens == (greedy_reference(reference_model(), [3, 17, 42], 8))
    finally:
        server.stop()


@pytest.mark.parametrize(
    "limits", [SessionLimits(idle_timeout_s=0.3), SessionLimits(max_lifetime_s=0.3)], ids=["idle", "lifetime"]
)
def test_an_idle_or_overlong_session_expires_and_is_freed(limits: SessionLimits) -> None:
    server, service = start_server(limits=limits)

    async def linger() -> pb.ServerMessage:
        channel, call, opened = await _open_stream(f"127.0.0.1:{server.port}", [3, 17, 42])
        assert opened.WhichOneof("kind") == "opened"
        message = await asyncio.wait_for(call.read(), 5)
        await channel.close()
        return message

    try:
        message = asyncio.run(linger())
        assert message.WhichOneof("kind") == "error" and message.error.code == pb.EXPIRED
        wait_until_freed(service, within_s=5)
    finally:
        server.stop()
