"""Auth token and TLS over real gRPC on loopback: the right token (and CA) gets `generate`'s output;
a missing or wrong token is refused UNAUTHENTICATED on every stream before the model runs; TLS
refuses clients that do not trust the server or do not speak TLS."""

from __future__ import annotations

from functools import lru_cache

import grpc
import pytest

from edgespec.client.edge_client import ClientOptions, ConnectionLost, EdgeClient, ServerError
from edgespec.client.recovery import NO_RECOVERY, RecoveryPolicy
from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.exits.heads import ExitHeads, ExitSpec
from edgespec.link import LinkEmulator, resolve_profile
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.servicer import VerifierService
from edgespec.transport.security import ClientSecurity, ServerSecurity
from tests.support.self_signed import self_signed_pair
from tests.support.tiny_models import greedy_reference, layer_skip_copy, tiny_model
from tests.support.wire import RawSession, open_message

PROMPT = [3, 17, 42, 8, 9, 61]
NEW_TOKENS = 16
TOKEN = "s3cret-Token_0123456789"
CONFIG = GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=3)


@lru_cache(maxsize=None)
def expected() -> list[int]:
    return greedy_reference(tiny_model("qwen2", seed=0), PROMPT, NEW_TOKENS)


@lru_cache(maxsize=None)
def certificate() -> tuple[bytes, bytes]:
    return self_signed_pair()


class CountingServer:
    """A served tiny target, with a logit-lens exit at layer 2, that counts its forward passes."""

    def __init__(self, security: ServerSecurity) -> None:
        model = tiny_model("qwen2", seed=0)
        self.forwards = 0
        # Every forward of the target embeds its input first.
        model.model.embed_tokens.register_forward_hook(lambda *args: self._count())
        exits = ExitHeads([ExitSpec(2)], model.config.hidden_size)
        self.service = VerifierService(TargetRuntime(model, exits), tokenizer=None, eos_ids=frozenset())
        self.running = RunningServer(self.service, ServerConfig(port=0, security=security))
        self.address = f"127.0.0.1:{self.running.port}"

    def _count(self) -> None:
        self.forwards += 1


@pytest.fixture(scope="module")
def token_server():
    server = CountingServer(ServerSecurity(token=TOKEN))
    yield server
    server.running.stop()


@pytest.fixture(scope="module")
def tls_server():
    cert, key = certificate()
    server = CountingServer(ServerSecurity(token=TOKEN, certificate_chain=cert, private_key=key))
    yield server
    server.running.stop()


def client(address: str, security: ClientSecurity, recovery: RecoveryPolicy = RecoveryPolicy()) -> EdgeClient:
    draft = DraftRuntime(layer_skip_copy(tiny_model("qwen2", seed=0), keep=2))
    return EdgeClient(address, draft, ClientOptions(recovery=recovery, security=security))


@pytest.mark.parametrize("mode", [Mode.CLOUD_AR, Mode.SD], ids=lambda m: m.value)
def test_a_client_with_the_token_gets_generates_output(token_server, mode: Mode) -> None:
    assert client(token_server.address, ClientSecurity(token=TOKEN)).generate(PROMPT, mode, CONFIG).tokens == expected()


@pytest.mark.parametrize("mode", [Mode.CLOUD_AR, Mode.SD], ids=lambda m: m.value)
@pytest.mark.parametrize(
    "token, reason",
    [(None, "requires an auth token"), ("wrong", "not valid"), (TOKEN[:-1], "not valid"), (TOKEN + "x", "not valid")],
    ids=["missing", "wrong", "prefix", "longer"],
)
def test_a_missing_or_wrong_token_is_refused_before_the_model_runs(
    token_server, mode: Mode, token: str | None, reason: str
) -> None:
    forwards = token_server.forwards
    with pytest.raises(ServerError) as refused:
        client(token_server.address, ClientSecurity(token=token)).generate(PROMPT, mode, CONFIG)
    assert refused.value.code == "UNAUTHENTICATED" and reason in str(refused.value)
    assert refused.value.partial is not None and refused.value.partial.tokens == []
    assert token_server.forwards == forwards and token_server.service.sessions == {}


def test_the_token_is_checked_on_every_stream_not_once_per_connection(token_server) -> None:
    with grpc.insecure_channel(token_server.address) as channel:
        authorized = RawSession(channel, metadata=[("authorization", f"Bearer {TOKEN}")])
        authorized.send(open_message(PROMPT, 4))
        assert authorized.receive().WhichOneof("kind") == "opened"
        # Same connection, while the authorized stream is open.
        for metadata in (
            [],
            [("authorization", TOKEN)],
            [("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer x")],
        ):
            stream = RawSession(channel, metadata=metadata)
            stream.send(open_message(PROMPT, 4))
            with pytest.raises(grpc.RpcError) as refused:
                stream.rest()
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        authorized.cancel()


def test_tls_with_the_servers_certificate_and_the_token_equals_generate(tls_server) -> None:
    cert, _ = certificate()
    security = ClientSecurity(token=TOKEN, tls=True, root_certificates=cert)
    assert client(tls_server.address, security).generate(PROMPT, Mode.SD_EE_PIPELINED, CONFIG).tokens == expected()
    # Through a TCP proxy the address names the proxy, so the client names the server it expects.
    link = LinkEmulator("127.0.0.1", tls_server.running.port, resolve_profile("lan"))
    with link.running() as port:
        via_link = ClientSecurity(token=TOKEN, tls=True, root_certificates=cert, server_name="localhost")
        assert client(f"127.0.0.1:{port}", via_link).generate(PROMPT, Mode.SD, CONFIG).tokens == expected()


@pytest.mark.parametrize(
    "security",
    [
        ClientSecurity(token=TOKEN),  # plaintext to a TLS port
        ClientSecurity(token=TOKEN, tls=True, root_certificates=self_signed_pair()[0]),  # trusts another CA
        ClientSecurity(token=TOKEN, tls=True, root_certificates=certificate()[0], server_name="verifier.example"),
    ],
    ids=["plaintext", "other-ca", "wrong-name"],
)
def test_a_client_that_cannot_verify_the_tls_server_never_connects(tls_server, security: ClientSecurity) -> None:
    forwards = tls_server.forwards
    with pytest.raises(ConnectionLost):  # without recovery: it would retry, then fall back to the draft alone
        client(tls_server.address, security, NO_RECOVERY).generate(PROMPT, Mode.SD, CONFIG)
    assert tls_server.forwards == forwards


def test_health_probes_need_no_token_but_the_limits_still_do(token_server) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from edgespec.transport import edgespec_pb2 as pb
    from edgespec.transport import edgespec_pb2_grpc as pb_grpc

    with grpc.insecure_channel(token_server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "edgespec.v1.Verifier"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        with pytest.raises(grpc.RpcError) as refused:
            pb_grpc.VerifierInfoStub(channel).GetLimits(pb.LimitsRequest(), timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
