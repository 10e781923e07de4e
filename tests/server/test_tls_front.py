"""nginx as the TLS front of a plaintext verifier (what `serve --replicas --tls-cert` puts before
Ray Serve's proxy): sessions through it equal `generate` in every mode, the token passes through
to the verifier's own check, and a client that cannot verify the certificate never connects.
nginx is a Debian package that `make install` installs: missing, these tests fail, never skip."""

from __future__ import annotations

import asyncio
from typing import Iterator

import psutil
import pytest

from edgespec.bench.processes import free_port
from edgespec.client.edge_client import ClientOptions, ConnectionLost, EdgeClient, ServerError
from edgespec.client.recovery import NO_RECOVERY
from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.exits.heads import ExitHeads, ExitSpec
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.servicer import VerifierService
from edgespec.server.tls_front import TlsFront
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
    tls = TlsFront("127.0.0.1", port, server.port, directory / "cert.pem", directory / "key.pem", idle_timeout_s=120)
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
