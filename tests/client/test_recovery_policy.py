"""The reconnect policy, as a specification: bounded, jittered exponential backoff; an outage
ends after its retries or its time budget; only failures a reconnect can cure are retried."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest

from edgespec.client.recovery import NO_RECOVERY, Outage, RecoveryPolicy, is_transient


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="test")


def test_backoff_grows_by_the_multiplier_up_to_the_cap_without_jitter() -> None:
    policy = RecoveryPolicy(backoff_initial_s=0.1, backoff_multiplier=2.0, backoff_max_s=0.5, jitter=0.0)
    delays = [policy.delay(attempt, random.Random(0)) for attempt in range(5)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])


def test_jitter_stays_within_its_band_and_actually_varies() -> None:
    policy = RecoveryPolicy(backoff_initial_s=1.0, backoff_max_s=1.0, jitter=0.25)
    rng = random.Random(7)
    delays = [policy.delay(0, rng) for _ in range(200)]
    assert all(0.75 <= d <= 1.25 for d in delays)
    assert max(delays) - min(delays) > 0.3


def test_an_outage_allows_exactly_the_configured_retries() -> None:
    outage = Outage(RecoveryPolicy(retries=3, backoff_initial_s=0.0, backoff_max_s=0.0), random.Random(0))
    delays = [outage.next_delay() for _ in range(5)]
    assert delays[:3] == [0.0, 0.0, 0.0] and delays[3:] == [None, None]
    assert outage.attempts == 3


def test_an_outage_stops_before_a_wait_that_would_overrun_its_budget() -> None:
    policy = RecoveryPolicy(retries=100, backoff_initial_s=1.0, backoff_max_s=1.0, jitter=0.0, outage_budget_s=2.5)
    outage = Outage(policy, random.Random(0))
    outage.started -= 2.0  # two seconds of the outage have passed
    assert outage.next_delay() is None


def test_no_recovery_never_retries_nor_falls_back() -> None:
    assert Outage(NO_RECOVERY).next_delay() is None
    assert NO_RECOVERY.fallback is False


@pytest.mark.parametrize(
    "error, transient",
    [
        (rpc_error(grpc.StatusCode.UNAVAILABLE), True),
        (rpc_error(grpc.StatusCode.CANCELLED), True),
        (rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED), True),
        (rpc_error(grpc.StatusCode.UNAUTHENTICATED), False),
        (rpc_error(grpc.StatusCode.UNIMPLEMENTED), False),
        (rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED), False),  # over the server's message size limit
        (ConnectionError("the server closed the stream"), True),
        (asyncio.TimeoutError(), True),
        (ValueError("a bug"), False),
    ],
    ids=lambda value: value.code().name if isinstance(value, grpc.aio.AioRpcError) else str(value),
)
def test_only_link_and_server_failures_are_transient(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


@pytest.mark.parametrize(
    "bad", [dict(retries=-1), dict(jitter=1.0), dict(backoff_multiplier=0.5), dict(probe_interval_s=0)]
)
def test_a_nonsensical_policy_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RecoveryPolicy(**bad)  # type: ignore[arg-type]
