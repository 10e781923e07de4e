"""A refusal says what was wrong, end to end: the verifier's code and message on the wire, the
edge client's error, and edge-serve's OpenAI error built from it. A budget of zero new tokens is a
bad request ("at least 1"), never "too large" and never an unreachable cloud."""

from __future__ import annotations

import asyncio
from typing import Iterator

import pytest

from edgespec.client.channel import open_channel, session_call
from edgespec.client.stream import ServerError, SessionStream
from edgespec.core.modes import Mode
from edgespec.core.stats import GenerationStats
from edgespec.models.target import TargetRuntime
from edgespec.openai_api.cloud_errors import as_openai_error
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.servicer import VerifierService
from edgespec.transport import edgespec_pb2 as pb
from edgespec.transport.security import ClientSecurity
from tests.support.tiny_models import tiny_model
from tests.support.wire import open_message


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    service = VerifierService(TargetRuntime(tiny_model("qwen2", seed=0)), None, frozenset({0}), "tiny")
    running = RunningServer(service, ServerConfig(port=0))
    yield running
    running.stop()


def client_error(port: int, message: pb.ClientMessage) -> ServerError:
    """The error the edge client's own stream raises for the server's reply to ``message``."""

    async def run() -> ServerError:
        async with open_channel(f"127.0.0.1:{port}", ClientSecurity()) as channel:
            stream = SessionStream(session_call(channel), GenerationStats(Mode.SD), read_timeout_s=10.0)
            await stream.send(message)
            try:
                await stream.receive()
            except ServerError as error:
                return error
            finally:
                await stream.cancel()
        raise AssertionError("the server opened the session")

    return asyncio.run(run())


def test_zero_new_tokens_is_a_bad_request_from_the_wire_to_the_openai_error(server: RunningServer) -> None:
    error = client_error(server.port, open_message([3, 5, 7], 0))
    assert error.code == "BAD_REQUEST"
    assert "max_new_tokens must be at least 1" in str(error) and "got 0" in str(error)
    openai = as_openai_error(error, f"127.0.0.1:{server.port}")
    assert (openai.status, openai.type, openai.code) == (400, "invalid_request_error", "bad_request")
    for wording in (str(error), openai.message):
        assert "too large" not in wording.lower() and "too_large" not in wording.lower()
        assert "unreachable" not in wording.lower()


def test_a_budget_over_the_limit_is_still_too_large_and_names_it(server: RunningServer) -> None:
    error = client_error(server.port, open_message([3, 5, 7], 10**6))
    assert error.code == "TOO_LARGE" and "max_new_tokens" in str(error) and "limit" in str(error)
