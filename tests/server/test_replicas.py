"""`edgespec serve --replicas 2` for real: a local Ray cluster with two verifier replicas of a tiny
target behind Ray Serve's gRPC proxy, started and stopped by the test as a child process.

Concurrent sessions in every mode equal `generate` and land on both replicas; a replica killed
mid-generation costs nothing (the client re-opens through the same address and finishes on the
other replica with the same text); a client without the token is refused by every replica; and
the cluster leaves no process behind. Which replica served what is read from the replicas' own
session lines on the cluster's console, the operator's view.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import grpc
import psutil
import pytest

from edgespec.bench.processes import free_port
from edgespec.client.edge_client import ClientOptions, EdgeClient, ServerError
from edgespec.client.recovery import NO_RECOVERY, RecoveryPolicy
from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.models.draft import DraftRuntime
from edgespec.transport.security import ClientSecurity
from tests.support.tiny_checkpoint import save_tiny_checkpoint
from tests.support.tiny_models import VOCAB, greedy_reference, qwen2_layer_skip_draft, qwen2_target
from tests.support.wire import RawSession, open_message

TOKEN = "replica-test-token-0123456789"
MODES = [Mode.CLOUD_AR, Mode.SD, Mode.SD_EE, Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED]
NEW_TOKENS = 16
MAX_MESSAGE_BYTES = 64 * 1024
STARTUP_S = 180.0  # Ray plus two replicas importing torch, on a loaded 2-core machine
# Retry long enough for the proxy to learn that a replica died; never fall back to the draft.
PATIENT = RecoveryPolicy(retries=40, backoff_initial_s=0.05, backoff_max_s=0.5, outage_budget_s=30.0, fallback=False)
SESSION_LINE = re.compile(r"replica (\S+) \(pid (\d+)\): (opened|ended) session (\S+)")
REFUSAL_LINE = re.compile(r"replica (\S+) \(pid (\d+)\): refused a session")
READY_LINE = re.compile(r"replica (\S+) \(pid (\d+)\): .* ready")


reference_model = qwen2_target
draft_model = qwen2_layer_skip_draft


@dataclass
class Cluster:
    process: subprocess.Popen[str]
    port: int
    lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout_s: float, what: str) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: predicate(self.lines) or self.process.poll() is not None, timeout_s):
                pytest.fail(f"{what}: not seen within {timeout_s:.0f} s; last lines:\n" + "\n".join(self.lines[-30:]))
            if not predicate(self.lines):
                pytest.fail(
                    f"the cluster exited ({self.process.returncode}) before {what}:\n" + "\n".join(self.lines[-30:])
                )

    def matches(self, pattern: re.Pattern[str], start: int = 0) -> list[re.Match[str]]:
        with self.changed:
            return [m for line in self.lines[start:] if (m := pattern.search(line))]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("replicas")
    target = save_tiny_checkpoint(directory / "tiny")
    token_file = directory / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    argv = [
        sys.executable, "-m", "edgespec.cli", "--log", "serve", "--replicas", "2",
        "--target", str(target), "--dtype", "float32", "--exits", "logit-lens:2,3", "--port", str(port),
        "--auth-token-file", str(token_file), "--threads", "1", "--max-message-bytes", str(MAX_MESSAGE_BYTES),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    running = Cluster(process, port)
    threading.Thread(target=running.read, daemon=True).start()
    try:
        running.wait_for(
            lambda lines: any("edgespec: serving" in line for line in lines), STARTUP_S, "the cluster serving"
        )
        # serve.run returns once both replicas pass their health checks; their ready lines may trail.
        running.wait_for(lambda _: len({m[2] for m in running.matches(READY_LINE)}) >= 2, 30, "two replicas ready")
        yield running
    finally:
        if process.poll() is None:  # a test failed before the shutdown test: still leave nothing behind
            descendants = psutil.Process(process.pid).children(recursive=True)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
            for child in descendants:
                if child.is_running():
                    child.kill()


def client(address: str, token: str | None, recovery: RecoveryPolicy = NO_RECOVERY) -> EdgeClient:
    options = ClientOptions(
        connect_timeout_s=10.0, read_timeout_s=20.0, recovery=recovery, security=ClientSecurity(token=token)
    )
    return EdgeClient(address, DraftRuntime(draft_model()), options)


def prompts(count: int) -> list[list[int]]:
    rng = random.Random(11)
    return [[rng.randrange(1, VOCAB) for _ in range(rng.randrange(2, 12))] for _ in range(count)]


def test_eight_concurrent_sessions_in_every_mode_equal_generate_on_both_replicas(cluster: Cluster) -> None:
    cases = prompts(8)
    expected = [greedy_reference(reference_model(), prompt, NEW_TOKENS) for prompt in cases]
    start = len(cluster.lines)

    async def run_all() -> list[list[int]]:
        async def one(index: int, prompt: list[int]) -> list[int]:
            config = GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=1 + index % 4)
            return (await client(cluster.address, TOKEN).agenerate(prompt, MODES[index % len(MODES)], config)).tokens

        return await asyncio.gather(*(one(i, p) for i, p in enumerate(cases)))

    assert asyncio.run(asyncio.wait_for(run_all(), 120)) == expected
    cluster.wait_for(
        lambda _: len([m for m in cluster.matches(SESSION_LINE, start) if m[3] == "opened"]) >= 8,
        30,
        "8 opened sessions logged",
    )
    opened = [m for m in cluster.matches(SESSION_LINE, start) if m[3] == "opened"]
    per_replica = {pid: sum(1 for m in opened if m[2] == pid) for pid in {m[2] for m in opened}}
    assert len(opened) == 8 and len(per_replica) == 2, f"sessions per replica pid: {per_replica}"


def test_a_client_without_the_token_is_refused_by_every_replica(cluster: Cluster) -> None:
    start = len(cluster.lines)
    ready = {m[2] for m in cluster.matches(READY_LINE)}
    refused_by: set[str] = set()
    # The router picks either idle replica; 40 tries miss one with probability 2**-39.
    for attempt in range(40):
        token = None if attempt % 2 == 0 else TOKEN[:-1] + "x"
        with pytest.raises(ServerError) as refused:
            client(cluster.address, token).generate(
                [3, 5, 7], Mode.SD if attempt % 4 < 2 else Mode.CLOUD_AR, GenerationConfig(max_new_tokens=4)
            )
        assert refused.value.code == "UNAUTHENTICATED"
        assert refused.value.partial is not None and refused.value.partial.tokens == []
        cluster.wait_for(
            lambda _: len(cluster.matches(REFUSAL_LINE, start)) >= attempt + 1, 30, f"refusal {attempt + 1} logged"
        )
        refused_by = {m[2] for m in cluster.matches(REFUSAL_LINE, start)}
        if refused_by >= ready:
            break
    assert refused_by == ready, f"refused by replica pids {refused_by}, replicas {ready}"
    assert not [m for m in cluster.matches(SESSION_LINE, start) if m[3] == "opened"], (
        "an unauthenticated session was opened"
    )


def test_a_message_over_max_message_bytes_is_refused_by_the_proxy(cluster: Cluster) -> None:
    with grpc.insecure_channel(cluster.address) as channel:
        session = RawSession(channel, metadata=[("authorization", f"Bearer {TOKEN}")], timeout_s=30)
        session.send(open_message([5] * (2 * MAX_MESSAGE_BYTES), 4))  # one byte per id: twice the limit
        with pytest.raises(grpc.RpcError) as refused:
            session.receive()
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_replica_killed_mid_generation_loses_nothing(cluster: Cluster) -> None:
    prompt, new_tokens = [3, 17, 42, 8, 9, 61], 24
    expected = greedy_reference(reference_model(), prompt, new_tokens)
    start = len(cluster.lines)
    killed: list[str] = []
    streamed: list[int] = []

    def on_commit(tokens: list[int]) -> None:
        if not killed:
            # The client waits here, mid-session: kill the replica that holds this session.
            cluster.wait_for(lambda _: bool(cluster.matches(SESSION_LINE, start)), 30, "the session's replica")
            pid = cluster.matches(SESSION_LINE, start)[0][2]
            os.kill(int(pid), signal.SIGKILL)
            killed.append(pid)
            killed.append(str(len(streamed) + len(tokens)))
        streamed.extend(tokens)

    config = GenerationConfig(max_new_tokens=new_tokens, gamma=2)
    result = client(cluster.address, TOKEN, PATIENT).generate(prompt, Mode.SD_EE_PIPELINED, config, on_commit)
    assert killed and int(killed[1]) < new_tokens, "the replica was not killed mid-generation"
    assert result.tokens == expected and streamed == expected
    assert result.stats.connection_losses >= 1 and result.stats.reconnects >= 1 and result.stats.fallbacks == 0
    opened_by = [m[2] for m in cluster.matches(SESSION_LINE, start) if m[3] == "opened"]
    assert opened_by[0] == killed[0] and opened_by[-1] != killed[0], (
        f"sessions opened by {opened_by}, killed {killed[0]}"
    )
    # Ray Serve starts a replacement for the dead replica (its start takes seconds; not waited for).
    replacing = re.compile(r"Adding 1 replica to Deployment\(name='Verifier'")
    cluster.wait_for(lambda _: bool(cluster.matches(replacing, start)), 60, "Serve replacing the dead replica")


def test_the_cluster_stops_on_sigterm_and_leaves_no_process(cluster: Cluster) -> None:
    descendants = psutil.Process(cluster.process.pid).children(recursive=True)
    assert len(descendants) >= 4, [p.name() for p in descendants]  # GCS, raylet, proxy, controller, replicas
    start = time.monotonic()
    cluster.process.send_signal(signal.SIGTERM)
    assert cluster.process.wait(timeout=60) == 0
    cluster.wait_for(lambda lines: any("edgespec: stopped" in line for line in lines), 5, "the stop line")
    survivors = [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not survivors, [(p.pid, p.name()) for p in survivors]
    assert time.monotonic() - start < 60
