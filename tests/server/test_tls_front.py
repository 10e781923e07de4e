"""nginx as the TLS front of a plaintext verifier (what `serve --replicas --tls-cert` puts before
Ray Serve's proxy): sessions through it equal `generate` in every mode, the token passes through
to the verifier's own check, and a client that cannot verify the certificate never connects.
nginx is a Debian package that `make install` installs: missing, these tests fail, never skip."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from edgespec.bench.processes import free_port
from edgespec.client.edge_client import ClientOptions, ConnectionLost, EdgeClient, ServerError
from edgespec.client.recovery import NO_RECOVERY, RecoveryPolicy
from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.exits.heads import ExitHeads, ExitSpec
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.metrics import VerifierMetrics
from edgespec.server.servicer import VerifierService
from edgespec.server.tls_front import TlsFront, nginx_config
from edgespec.transport.security import ClientSecurity, ServerSecurity
from tests.support.self_signed import self_signed_pair
from tests.support.tiny_models import greedy_reference, layer_skip_copy, tiny_model

TOKEN = "tls-front-token-0123456789"
PROMPTS = [[3, 17, 42, 8, 9, 61], [5, 6], [90, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]
NEW_TOKENS = 16
MODES = [Mode.CLOUD_AR, Mode.SD, Mode.SD_EE, Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED]


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, bytes]]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = self_signed_pair()
    (directory / "cert.pem").write_bytes(cert)
    (directory / "key.pem").write_bytes(key)
    model = tiny_model("qwen2", seed=0)
    service = VerifierService(
        TargetRuntime(model, ExitHeads([ExitSpec(2), ExitSpec(3)], model.config.hidden_size)),
        tokenizer=None,
        eos_ids=frozenset(),
    )
    server = RunningServer(service, ServerConfig(port=0, security=ServerSecurity(token=TOKEN)))
    port = free_port()
    tls = TlsFront(
        "127.0.0.1",
        port,
        [f"127.0.0.1:{server.port}"],
        directory / "cert.pem",
        directory / "key.pem",
        idle_timeout_s=120,
    )
    try:
        tls.wait_ready()
        yield f"127.0.0.1:{port}", cert
    finally:
        workers = psutil.Process(tls.process.pid).children() if tls.process.poll() is None else []
        tls.stop()
        server.stop()
        assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE], (
            "nginx left a worker behind"
        )


def client(address: str, security: ClientSecurity) -> EdgeClient:
    options = ClientOptions(connect_timeout_s=5.0, read_timeout_s=10.0, recovery=NO_RECOVERY, security=security)
    return EdgeClient(address, DraftRuntime(layer_skip_copy(tiny_model("qwen2", seed=0), keep=3)), options)


def test_concurrent_sessions_through_the_tls_front_equal_generate_in_every_mode(front: tuple[str, bytes]) -> None:
    address, cert = front
    reference = tiny_model("qwen2", seed=0)
    cases = [(prompt, mode) for prompt in PROMPTS for mode in MODES]
    expected = [greedy_reference(reference, prompt, NEW_TOKENS) for prompt, _ in cases]
    security = ClientSecurity(token=TOKEN, tls=True, root_certificates=cert)

    async def run_all() -> list[list[int]]:
        async def one(prompt: list[int], mode: Mode) -> list[int]:
            return (
                await client(address, security).agenerate(
                    prompt, mode, GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=3)
                )
            ).tokens

        return await asyncio.gather(*(one(p, m) for p, m in cases))

    assert asyncio.run(asyncio.wait_for(run_all(), 60)) == expected


@pytest.mark.parametrize(
    "token, reason",
    [(None, "requires an auth token"), ("wrong-token-0123456789", "not valid")],
    ids=["missing", "wrong"],
)
def test_the_token_passes_through_to_the_verifiers_check(
    front: tuple[str, bytes], token: str | None, reason: str
) -> None:
    address, cert = front
    with pytest.raises(ServerError) as refused:
        client(address, ClientSecurity(token=token, tls=True, root_certificates=cert)).generate(
            PROMPTS[0], Mode.SD, GenerationConfig(max_new_tokens=4)
        )
    assert refused.value.code == "UNAUTHENTICATED" and reason in str(refused.value)


@pytest.mark.parametrize(
    "security",
    [ClientSecurity(token=TOKEN), ClientSecurity(token=TOKEN, tls=True, root_certificates=self_signed_pair()[0])],
    ids=["plaintext", "other-ca"],
)
def test_a_client_that_cannot_verify_the_front_never_connects(
    front: tuple[str, bytes], security: ClientSecurity
) -> None:
    address, _ = front
    with pytest.raises(ConnectionLost):
        client(address, security).generate(PROMPTS[0], Mode.SD, GenerationConfig(max_new_tokens=4))


# ------------------------------------------------------------------ several upstreams, one of them down


def tiny_server() -> RunningServer:
    model = tiny_model("qwen2", seed=0)
    service = VerifierService(
        TargetRuntime(model, ExitHeads([ExitSpec(2), ExitSpec(3)], model.config.hidden_size)),
        tokenizer=None,
        eos_ids=frozenset(),
        metrics=VerifierMetrics(),  # its refusals are counted
    )
    return RunningServer(service, ServerConfig(port=0, security=ServerSecurity(token=TOKEN)))


@pytest.fixture
def two_upstreams(tmp_path: Path) -> Iterator[tuple[str, bytes, list[RunningServer]]]:
    cert, key = self_signed_pair()
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    servers = [tiny_server(), tiny_server()]
    port = free_port()
    upstreams = [f"127.0.0.1:{server.port}" for server in servers]
    tls = TlsFront("127.0.0.1", port, upstreams, tmp_path / "cert.pem", tmp_path / "key.pem", idle_timeout_s=120)
    try:
        tls.wait_ready()
        yield f"127.0.0.1:{port}", cert, servers
    finally:
        tls.stop()
        for server in servers:
            server.stop()


def test_the_front_lists_every_upstream_with_passive_checks(tmp_path: Path) -> None:
    text = nginx_config("0.0.0.0", 443, ["10.0.0.1:9000", "10.0.0.2:9000"], tmp_path, tmp_path, tmp_path, 120)
    assert "server 10.0.0.1:9000 max_fails=1 fail_timeout=" in text and "server 10.0.0.2:9000 max_fails=1" in text
    assert "grpc_next_upstream error timeout;" in text and "grpc_next_upstream_tries 2;" in text


def test_an_upstream_that_is_down_is_passed_over_without_a_client_retry(
    two_upstreams: tuple[str, bytes, list[RunningServer]],
) -> None:
    address, cert, servers = two_upstreams
    servers[0].stop()  # like a crash: the port closes, open streams die
    security = ClientSecurity(token=TOKEN, tls=True, root_certificates=cert)
    expected = greedy_reference(tiny_model("qwen2", seed=0), PROMPTS[0], 8)
    # Round-robin would send every other session to the dead one: each must land on the live one.
    for _ in range(6):
        result = client(address, security).generate(PROMPTS[0], Mode.SD, GenerationConfig(max_new_tokens=8))
        assert result.tokens == expected


def test_a_draining_upstream_refuses_busy_and_the_retry_lands_on_another(
    two_upstreams: tuple[str, bytes, list[RunningServer]],
) -> None:
    address, cert, servers = two_upstreams
    servers[0].service.draining = True  # up, NOT_SERVING, refusing new sessions with BUSY
    security = ClientSecurity(token=TOKEN, tls=True, root_certificates=cert)
    retrying = RecoveryPolicy(retries=4, backoff_initial_s=0.05, backoff_max_s=0.2, fallback=False)
    options = ClientOptions(connect_timeout_s=5.0, read_timeout_s=10.0, recovery=retrying, security=security)
    expected = greedy_reference(tiny_model("qwen2", seed=0), PROMPTS[0], 8)
    for _ in range(4):
        edge = EdgeClient(address, DraftRuntime(layer_skip_copy(tiny_model("qwen2", seed=0), keep=3)), options)
        assert edge.generate(PROMPTS[0], Mode.SD, GenerationConfig(max_new_tokens=8)).tokens == expected
    assert not servers[0].service.sessions
    # Round-robin sent it some of the first attempts: each was refused, then retried elsewhere.
    registry = servers[0].service.metrics.registry
    assert (registry.get_sample_value("edgespec_verifier_refusals_total", {"reason": "BUSY"}) or 0) >= 1
