"""Losslessness on the paged engine, through the real client and gRPC server (tiny random Qwen2,
fp32): every guess-based mode's greedy output equals `generate` token for token, with a draft that
mostly agrees and one that mostly does not; concurrent sessions of different lengths share packed
passes and each equals its single run; sampled tokens follow the target's distribution; a full
pool refuses a session with BUSY and serves the next one once room is back; and the real
`edgespec serve --engine paged` command serves a checkpoint losslessly."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

from edgespec.client.edge_client import ClientOptions, EdgeClient
from edgespec.client.recovery import NO_RECOVERY
from edgespec.client.stream import ConnectionLost, ServerError
from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.engines.paged import PagedEngine, PoolSettings
from edgespec.models.draft import DraftRuntime
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.cloud_draft import CloudDraft
from edgespec.server.servicer import VerifierService
from tests.client.test_network_sampling_distribution import (
    PROMPT,
    SAMPLES,
    SAMPLING,
    exact_first_two,
    total_variation,
    tv_bound,
)
from tests.client.test_network_sampling_distribution import VOCAB as SMALL_VOCAB
from tests.support.tiny_checkpoint import save_tiny_checkpoint
from tests.support.tiny_models import VOCAB, greedy_reference, layer_skip_copy, tiny_model

NEW_TOKENS = 24
GUESS_BASED = (Mode.CLOUD_AR, Mode.SD, Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED, Mode.CLOUD_SD)
PROMPTS = ([5, 17, 3, 88, 41], [9] * 3 + list(range(20, 60)), [71, 2])


def agreeing_draft() -> DraftRuntime:
    return DraftRuntime(layer_skip_copy(tiny_model("qwen2", seed=0), keep=3))


def disagreeing_draft() -> DraftRuntime:
    return DraftRuntime(tiny_model("qwen2", seed=77))


@pytest.fixture(scope="module")
def engine() -> PagedEngine:
    return PagedEngine(tiny_model("qwen2", seed=0), PoolSettings(sessions=16, session_tokens=192, page_size=16))


@pytest.fixture(scope="module")
def server(engine: PagedEngine) -> Iterator[RunningServer]:
    cloud_draft = CloudDraft(layer_skip_copy(tiny_model("qwen2", seed=0), keep=2))
    service = VerifierService(engine, tokenizer=None, eos_ids=frozenset(), cloud_draft=cloud_draft)
    running = RunningServer(service, ServerConfig(port=0))
    yield running
    running.stop()


def generate(address: str, draft: DraftRuntime | None, prompt: list[int], mode: Mode, **options: object) -> list[int]:
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, **options)  # type: ignore[arg-type]
    return (
        EdgeClient(address, draft if mode not in (Mode.CLOUD_AR, Mode.CLOUD_SD) else None)
        .generate(prompt, mode, config)
        .tokens
    )


@pytest.mark.parametrize("draft", [agreeing_draft, disagreeing_draft], ids=["agreeing", "disagreeing"])
def test_every_guess_based_mode_equals_generate(engine: PagedEngine, server: RunningServer, draft: object) -> None:
    address = f"127.0.0.1:{server.port}"
    for prompt in PROMPTS:
        want = greedy_reference(engine.model, prompt, NEW_TOKENS)
        for mode in GUESS_BASED:
            for gamma in (1, 4):
                got = generate(address, draft(), prompt, mode, gamma=gamma)  # type: ignore[operator]
                assert got == want, f"{mode.value}, gamma {gamma}, prompt of {len(prompt)}"


def test_sd_ee_is_refused_clearly_without_exits(server: RunningServer) -> None:
    with pytest.raises(ServerError, match="NO_EXITS"):
        generate(f"127.0.0.1:{server.port}", agreeing_draft(), PROMPTS[0], Mode.SD_EE)


def test_concurrent_sessions_share_packed_passes_and_each_equals_its_single_run(
    engine: PagedEngine, server: RunningServer
) -> None:
    address = f"127.0.0.1:{server.port}"
    prompts = [[(7 * index + offset) % (VOCAB - 1) + 1 for offset in range(3 + 5 * index)] for index in range(8)]
    wants = [greedy_reference(engine.model, prompt, NEW_TOKENS) for prompt in prompts]
    before = sum(count for size, count in engine.batch_sizes.items() if size > 1)

    async def all_at_once() -> list[list[int]]:
        async def one(index: int) -> list[int]:
            mode = GUESS_BASED[index % len(GUESS_BASED)]
            draft = (agreeing_draft if index % 2 else disagreeing_draft)()
            client = EdgeClient(address, draft if mode not in (Mode.CLOUD_AR, Mode.CLOUD_SD) else None)
            config = GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=1 + index % 5)
            return (await client.agenerate(prompts[index], mode, config)).tokens

        return await asyncio.gather(*(one(index) for index in range(len(prompts))))

    assert asyncio.run(all_at_once()) == wants
    assert sum(count for size, count in engine.batch_sizes.items() if size > 1) > before, "no pass served two sessions"


@pytest.fixture
def own_server() -> Iterator[tuple[PagedEngine, RunningServer]]:
    """An engine and server of this test's own: a session an earlier test left to the collector
    could give its reservation back mid-test and make room for the request that must be refused."""
    engine = PagedEngine(tiny_model("qwen2", seed=0), PoolSettings(sessions=4, session_tokens=192, page_size=16))
    running = RunningServer(VerifierService(engine, tokenizer=None, eos_ids=frozenset()), ServerConfig(port=0))
    yield engine, running
    running.stop()


def test_a_full_pool_refuses_with_busy_and_serves_once_room_is_back(
    own_server: tuple[PagedEngine, RunningServer],
) -> None:
    engine, server = own_server
    address = f"127.0.0.1:{server.port}"
    taken = []
    while True:  # every reservation left, held here as if by running sessions
        try:
            taken.append(engine.new_cache())
        except RuntimeError:
            break
    impatient = EdgeClient(address, agreeing_draft(), ClientOptions(recovery=NO_RECOVERY))
    with pytest.raises(ConnectionLost, match="BUSY: the paged KV pool is full"):
        impatient.generate(PROMPTS[0], Mode.SD, GenerationConfig(max_new_tokens=NEW_TOKENS))
    taken.clear()
    gc.collect()
    assert generate(address, agreeing_draft(), PROMPTS[0], Mode.SD) == greedy_reference(
        engine.model, PROMPTS[0], NEW_TOKENS
    )


def test_sampled_tokens_follow_the_targets_distribution() -> None:
    """The sampling-distribution test of the transformers engine, on the paged one: over 800
    seeds, sd, sd-ee-pipelined and cloud-sd's first two tokens stay within the total-variation
    bound of the target's exact distribution (a rubber-stamping verifier would be 4x outside)."""
    target = tiny_model("qwen2", seed=0, vocab=SMALL_VOCAB)
    draft = tiny_model("qwen2", seed=99, vocab=SMALL_VOCAB)
    bound = tv_bound(SAMPLES, SMALL_VOCAB, 1e-6)
    target_first, target_second = exact_first_two(target)
    engine = PagedEngine(target, PoolSettings(sessions=8, session_tokens=96, page_size=16))
    server = RunningServer(
        VerifierService(engine, tokenizer=None, eos_ids=frozenset(), cloud_draft=CloudDraft(draft)),
        ServerConfig(port=0),
    )
    address = f"127.0.0.1:{server.port}"
    firsts: Counter[int] = Counter()
    seconds: Counter[int] = Counter()
    try:
        for seed in range(SAMPLES):
            mode = (Mode.SD, Mode.SD_EE_PIPELINED, Mode.CLOUD_SD)[seed % 3]
            gamma = 1 + (seed // 3) % 8
            config = GenerationConfig(max_new_tokens=max(2, gamma), gamma=gamma, sampling=SAMPLING, seed=seed)
            client = EdgeClient(address, None if mode is Mode.CLOUD_SD else DraftRuntime(draft))
            tokens = client.generate(PROMPT, mode, config).tokens
            firsts[tokens[0]] += 1
            seconds[tokens[1]] += 1
    finally:
        server.stop()
    first_tv, second_tv = total_variation(firsts, target_first), total_variation(seconds, target_second)
    assert first_tv < bound and second_tv < bound, (
        f"total variation {first_tv:.3f}, {second_tv:.3f} (bound {bound:.3f})"
    )


def test_the_serve_command_with_engine_paged_is_lossless(tmp_path: Path) -> None:
    target = save_tiny_checkpoint(tmp_path / "tiny")
    argv = [
        sys.executable, "-m", "edgespec.cli", "serve", "--target", str(target), "--dtype", "float32",
        "--engine", "paged", "--port", "0", "--threads", "1", "--max-sessions", "4", "--session-context", "256",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "edgespec: serving" in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(120) and process.poll() is None, "".join(lines[-20:])
        serving = next(line for line in lines if "edgespec: serving" in line)
        assert "paged" in serving
        address = "127.0.0.1:" + serving.split(" on ")[1].split()[0].rsplit(":", 1)[1]
        model = tiny_model("qwen2", seed=0)
        for mode in (Mode.CLOUD_AR, Mode.SD_EE_PIPELINED):
            assert generate(address, agreeing_draft(), PROMPTS[1], mode, gamma=4) == greedy_reference(
                model, PROMPTS[1], NEW_TOKENS
            )
    finally:
        process.terminate()
        process.wait(timeout=60)
