"""A session lives only inside the stream that opened it; the server's limits hold and each refusal
names its reason; none of it disturbs another session. Real gRPC on loopback, tiny target."""

from __future__ import annotations

from functools import lru_cache

import grpc
import pytest
import torch

from edgespec.client.edge_client import ClientOptions, EdgeClient, ServerError
from edgespec.core.config import GREEDY, GenerationConfig
from edgespec.core.modes import Mode
from edgespec.models.target import TargetRuntime
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.limits import SessionLimits
from edgespec.server.refusals import Refused
from edgespec.server.servicer import VerifierService
from edgespec.server.session import ServerSession
from edgespec.transport import edgespec_pb2 as pb
from tests.support.tiny_models import greedy_reference, tiny_model
from tests.support.wire import GreedySession, RawSession, block_message, drafts_from, open_message

PROMPT_A = [3, 17, 42, 8, 9, 61]
PROMPT_B = [70, 2, 2, 55]
NEW_TOKENS = 20
LIMITS = SessionLimits(max_prompt_tokens=32, max_new_tokens=24, max_block=4)
MAX_MESSAGE_BYTES = 16 * 1024


@lru_cache(maxsize=None)
def target_model() -> torch.nn.Module:
    return tiny_model("qwen2", seed=0)


@lru_cache(maxsize=None)
def reference(prompt: tuple[int, ...], new_tokens: int) -> list[int]:
    return greedy_reference(target_model(), list(prompt), new_tokens)


@pytest.fixture(scope="module")
def server():
    service = VerifierService(TargetRuntime(target_model()), tokenizer=None, eos_ids=frozenset(), limits=LIMITS)
    running = RunningServer(service, ServerConfig(port=0, limits=LIMITS, max_message_bytes=MAX_MESSAGE_BYTES))
    yield running
    running.stop()


@pytest.fixture
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


def finish(session: GreedySession, prompt: list[int]) -> list[int]:
    expected = reference(tuple(prompt), NEW_TOKENS)
    while not session.finished:
        session.step(drafts_from(expected, len(session.tokens), session.round))
    assert session.close() == []
    return session.tokens


def error_of(replies: list[pb.ServerMessage]) -> tuple[str, str]:
    """The one error a refused stream ends with, as (code name, message)."""
    assert replies and replies[-1].WhichOneof("kind") == "error", replies
    return pb.ErrorCode.Name(replies[-1].error.code), replies[-1].error.message


def test_a_block_on_another_stream_cannot_reach_an_open_session(channel) -> None:
    owner = GreedySession(channel, PROMPT_A, NEW_TOKENS)
    owner.step(drafts_from(reference(tuple(PROMPT_A), NEW_TOKENS), 0, 0))
    # The intruder knows the session id and the round the session expects: neither helps.
    intruder = RawSession(channel, metadata=[("session-id", owner.session_id)])
    intruder.send(block_message(owner.round, [1, 2]))
    code, message = error_of(intruder.rest())
    assert code == "BAD_REQUEST" and "open" in message
    assert finish(owner, PROMPT_A) == reference(tuple(PROMPT_A), NEW_TOKENS)


def test_two_interleaved_sessions_stay_independent(channel) -> None:
    first, second = GreedySession(channel, PROMPT_A, NEW_TOKENS), GreedySession(channel, PROMPT_B, NEW_TOKENS)
    assert first.session_id != second.session_id and len(first.session_id) >= 24
    expected = {id(first): reference(tuple(PROMPT_A), NEW_TOKENS), id(second): reference(tuple(PROMPT_B), NEW_TOKENS)}
    while not (first.finished and second.finished):
        for session in (first, second):
            if not session.finished:
                session.step(drafts_from(expected[id(session)], len(session.tokens), session.round))
    assert first.close() == [] and second.close() == []
    assert first.tokens == expected[id(first)] and second.tokens == expected[id(second)]
    assert 0 in first.accepted and max(first.accepted) > 0, "drafts should be both rejected and accepted"


@pytest.mark.parametrize(
    "opening, code",
    [
        (open_message([1] * (LIMITS.max_prompt_tokens + 1), 8), "TOO_LARGE"),
        (open_message(PROMPT_A, LIMITS.max_new_tokens + 1), "TOO_LARGE"),
        (open_message(PROMPT_A, 4, committed_ids=[1] * 5), "TOO_LARGE"),
        (open_message(PROMPT_A, 8, sampling=pb.Sampling(temperature=float("nan"))), "BAD_REQUEST"),
        (open_message(PROMPT_A, 8, protocol_version=99), "UNSUPPORTED_VERSION"),
    ],
    ids=["prompt", "max-new-tokens", "committed-ids", "temperature", "version"],
)
def test_an_open_beyond_the_limits_is_refused_with_its_code(channel, opening: pb.ClientMessage, code: str) -> None:
    stream = RawSession(channel)
    stream.send(opening)
    assert error_of(stream.rest())[0] == code


def test_a_block_beyond_the_block_limit_is_refused_too_large(channel) -> None:
    session = GreedySession(channel, PROMPT_A, NEW_TOKENS)
    session.stream.send(block_message(0, [1] * (LIMITS.max_block + 1)))
    code, message = error_of(session.stream.rest())
    assert code == "TOO_LARGE" and str(LIMITS.max_block) in message


def test_a_message_over_the_size_limit_is_refused_by_grpc_and_the_server_serves_on(server, channel) -> None:
    huge = open_message([5] * MAX_MESSAGE_BYTES, 8)  # one byte per id: over the limit
    stream = RawSession(channel)
    stream.send(huge)
    with pytest.raises(grpc.RpcError) as refused:
        stream.rest()
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    address = f"127.0.0.1:{server.port}"
    with pytest.raises(ServerError) as mapped:  # the edge client names it, rather than "connection lost"
        EdgeClient(address, options=ClientOptions(connect_timeout_s=5)).generate(
            [5] * MAX_MESSAGE_BYTES, Mode.CLOUD_AR, GenerationConfig(max_new_tokens=8)
        )
    assert mapped.value.code == "RESOURCE_EXHAUSTED"
    result = EdgeClient(address).generate(PROMPT_A, Mode.CLOUD_AR, GenerationConfig(max_new_tokens=NEW_TOKENS))
    assert result.tokens == reference(tuple(PROMPT_A), NEW_TOKENS)


def test_a_session_past_the_targets_context_window_is_refused_before_any_forward() -> None:
    runtime = TargetRuntime(target_model())
    window = runtime.context_length
    assert window == 512
    roomy = SessionLimits(max_prompt_tokens=2 * window, max_new_tokens=2 * window)
    with pytest.raises(Refused, match="context window of 512") as refused:
        ServerSession(runtime, [1] * (window - 8), [], GREEDY, 0, 9, frozenset(), roomy)
    assert refused.value.code == "TOO_LARGE"
    assert len(runtime.live_caches) == 0
    ServerSession(runtime, [1] * (window - 8), [], GREEDY, 0, 8, frozenset(), roomy)  # exactly fits
