"""`serve`'s probe services on a real gRPC server with the tiny target: grpc.health.v1 answers
SERVING for the server and the Verifier service only while a model is loaded (NOT_SERVING after
shutdown begins, NOT_FOUND for a service it does not host), and GetLimits advertises the limits
a session is refused by."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgespec.exits.heads import ExitHeads, ExitSpec
from edgespec.models.target import TargetRuntime
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.health import VERIFIER_SERVICE, WATCH_POLL_S, LimitsService, VerifierHealth
from edgespec.server.servicer import VerifierService
from edgespec.server.session import SessionLimits
from edgespec.transport import edgespec_pb2 as pb
from edgespec.transport import edgespec_pb2_grpc as pb_grpc
from tests.support.tiny_models import tiny_model

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LIMITS = SessionLimits(max_prompt_tokens=300, max_new_tokens=100, max_block=16)


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    model = tiny_model("qwen2", seed=0)
    service = VerifierService(
        TargetRuntime(model, ExitHeads([ExitSpec(2)], model.config.hidden_size)), None, frozenset({0}), "tiny", LIMITS
    )
    running = RunningServer(service, ServerConfig(port=0, limits=LIMITS, max_message_bytes=2 * 1024 * 1024))
    yield running
    running.stop()


def call(port: int, work: Any) -> Any:
    async def run() -> Any:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            return await work(channel)

    return asyncio.run(run())


def test_health_is_serving_for_the_server_and_the_verifier(server: RunningServer) -> None:
    for service in ("", VERIFIER_SERVICE):
        reply = call(
            server.port,
            lambda channel: health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service)),
        )
        assert reply.status == SERVING, service


def test_health_of_a_service_it_does_not_host_is_not_found(server: RunningServer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        call(
            server.port,
            lambda channel: health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="no.such.Service")
            ),
        )
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def test_get_limits_advertises_the_session_limits(server: RunningServer) -> None:
    limits = call(server.port, lambda channel: pb_grpc.VerifierInfoStub(channel).GetLimits(pb.LimitsRequest()))
    assert (limits.max_prompt_tokens, limits.max_new_tokens, limits.max_block) == (300, 100, 16)
    assert limits.context_tokens == 512  # the tiny model's max_position_embeddings
    assert limits.max_message_bytes == 2 * 1024 * 1024


def tiny_service() -> VerifierService:
    return VerifierService(TargetRuntime(tiny_model("qwen2", seed=0)), None, frozenset({0}), "tiny")


def verifier_status(checker: VerifierHealth) -> int:
    request = health_pb2.HealthCheckRequest(service=VERIFIER_SERVICE)
    return asyncio.run(checker.Check(request, None)).status


def test_not_serving_once_shutting_down_draining_or_without_a_pass_thread() -> None:
    serving = tiny_service()
    assert verifier_status(VerifierHealth(serving)) == SERVING
    shutting_down = VerifierHealth(serving)
    asyncio.run(shutting_down.enter_graceful_shutdown())
    assert verifier_status(shutting_down) == NOT_SERVING
    draining = tiny_service()
    draining.draining = True
    assert verifier_status(VerifierHealth(draining)) == NOT_SERVING
    stopped = tiny_service()
    stopped.shutdown()  # the pass thread ends: queued rounds would never run
    assert verifier_status(VerifierHealth(stopped)) == NOT_SERVING
    serving.shutdown()


def test_no_model_is_not_serving() -> None:
    assert verifier_status(VerifierHealth(SimpleNamespace(runtime=SimpleNamespace(model=None)))) == NOT_SERVING


def test_limits_fit_the_wire_whatever_the_configuration() -> None:
    huge = SimpleNamespace(
        limits=SessionLimits(max_prompt_tokens=2**40, max_new_tokens=2**40),
        runtime=SimpleNamespace(context_length=None, sliding_window=None),
    )
    limits = LimitsService(huge, 2**40).limits()
    assert limits.max_prompt_tokens == limits.max_new_tokens == limits.max_message_bytes == 2**32 - 1
    assert limits.context_tokens == 0


def test_watch_streams_the_verifiers_status(server: RunningServer) -> None:
    async def first_status(channel: grpc.aio.Channel) -> int:
        call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=VERIFIER_SERVICE))
        reply = await call.read()
        call.cancel()
        return reply.status

    assert call(server.port, first_status) == SERVING


def test_a_stopped_verifier_is_unhealthy_within_one_probe_interval() -> None:
    """Within one ``WATCH_POLL_S``: a Watch sees NOT_SERVING once shutdown begins, and a Check
    after the server stopped fails UNAVAILABLE (nothing listens) or answers NOT_SERVING."""
    model = tiny_model("qwen2", seed=0)
    running = RunningServer(VerifierService(TargetRuntime(model), None, frozenset({0}), "tiny"), ServerConfig(port=0))
    address = f"127.0.0.1:{running.port}"

    async def watch_shutdown() -> list[int]:
        async with grpc.aio.insecure_channel(address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=VERIFIER_SERVICE))
            seen = [(await watch.read()).status]
            assert running.health is not None
            await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(running.health.enter_graceful_shutdown(), running._loop)
            )
            seen.append((await asyncio.wait_for(watch.read(), WATCH_POLL_S + 0.5)).status)
            watch.cancel()
            return seen

    async def check_stopped() -> int | grpc.StatusCode:
        async with grpc.aio.insecure_channel(address) as channel:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=VERIFIER_SERVICE), timeout=WATCH_POLL_S
                )
            except grpc.aio.AioRpcError as error:
                return error.code()
            return reply.status

    try:
        assert asyncio.run(watch_shutdown()) == [SERVING, NOT_SERVING]
    finally:
        running.stop(grace=None)
    assert asyncio.run(check_stopped()) in (grpc.StatusCode.UNAVAILABLE, NOT_SERVING)
