"""What the client does when the cloud goes away: which failures are worth a retry, how long to
wait between tries, when to stop trying and decode on the edge alone, and how to tell that the
server is back.

The policy is pure (delays, budgets, classification); the two helpers at the bottom only watch a
gRPC channel's connectivity. Re-opening a session is the client's job (``edge_client.py``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Callable

import grpc

logger = logging.getLogger(__name__)

# gRPC statuses that no reconnect can cure: retrying them would only hide a misconfiguration.
PERMANENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        # A message over the server's size limit: the same request would be refused again.
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)

# Protocol error codes (``ServerError.code``) a re-opened session cures: BUSY (admission control:
# "retry later") and EXPIRED (the session outlived the server's idle or lifetime limit; a new one
# resumes from the committed text). Treated like an outage; every other refusal is the request's
# fault and is raised.
TRANSIENT_SERVER_CODES = frozenset({"BUSY", "EXPIRED"})


@dataclass(frozen=True)
class RecoveryPolicy:
    """How hard to try before giving up on the cloud, and what to do meanwhile.

    An *outage* starts when a session fails and ends when a session opens again. The client first
    makes up to ``retries`` quick reconnect attempts (an exponentially growing, jittered delay
    before each). Then, with ``fallback``, it decodes *provisional* tokens with the draft alone
    while it probes the server every ``probe_interval_s``; when the server answers, the
    provisional tokens are re-verified by the target (confirmed or retracted), so the final text
    is still the target's. Once the provisional text is complete the client waits for the server
    until ``outage_budget_s`` after the outage began, then keeps the provisional tokens, flagged.
    Without ``fallback`` (``--no-provisional``) it shows nothing provisional: it keeps trying every
    ``probe_interval_s`` within ``outage_budget_s`` and then raises ``ConnectionLost``.
    The default budget covers a restart of ``edgespec serve`` with the default target loaded
    from the local cache (the documentation's measurements page on network failures times it).
    """

    retries: int = 4
    backoff_initial_s: float = 0.1
    backoff_multiplier: float = 2.0
    backoff_max_s: float = 3.0
    jitter: float = 0.25  # each delay is scaled by a uniform factor in [1 - jitter, 1 + jitter]
    outage_budget_s: float = 120.0
    fallback: bool = True
    probe_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.backoff_initial_s < 0 or self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("need 0 <= backoff_initial_s <= backoff_max_s")
        if self.backoff_multiplier < 1:
            raise ValueError(f"backoff_multiplier must be >= 1, got {self.backoff_multiplier}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")
        if self.outage_budget_s < 0:
            raise ValueError(f"outage_budget_s must be >= 0, got {self.outage_budget_s}")
        if self.probe_interval_s <= 0:
            raise ValueError(f"probe_interval_s must be > 0, got {self.probe_interval_s}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before reconnect attempt ``attempt`` (0-based)."""
        base = min(self.backoff_max_s, self.backoff_initial_s * self.backoff_multiplier**attempt)
        # Jitter keeps many clients cut off by one server restart from reconnecting in lockstep.
        return base * rng.uniform(1 - self.jitter, 1 + self.jitter)


NO_RECOVERY = RecoveryPolicy(retries=0, fallback=False, outage_budget_s=0.0)


class Outage:
    """One stretch of lost contact: counts attempts and hands out the delay before the next."""

    def __init__(self, policy: RecoveryPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.attempts = 0
        self.started = time.monotonic()
        self._rng = rng or random.Random()

    def next_delay(self) -> float | None:
        """The wait before the next attempt, or None once it is time to stop trying (with
        fallback: after the quick retries; without: once the budget is spent)."""
        if self.attempts < self.policy.retries:
            delay = self.policy.delay(self.attempts, self._rng)
        elif self.policy.fallback:
            return None  # go on with provisional tokens; probing takes over
        else:
            delay = self.policy.probe_interval_s  # nothing to show meanwhile: keep trying
        if self.remaining_s() < delay:
            return None
        self.attempts += 1
        return delay

    def again(self) -> "Outage":
        """The same outage after a probe found the server: fresh quick retries, the same budget
        (a server that accepts connections but never opens a session must not extend it)."""
        outage = Outage(self.policy, self._rng)
        outage.started = self.started
        return outage

    def remaining_s(self) -> float:
        """Seconds of the outage budget left."""
        return self.policy.outage_budget_s - (time.monotonic() - self.started)


def is_transient(error: BaseException) -> bool:
    """True for failures of the link or the server's process, which a reconnect may cure."""
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code() not in PERMANENT_CODES
    # ConnectionError: the stream ended or no connection came up; TimeoutError: a read or connect
    # deadline passed; InvalidStateError: a write on a call the server already ended.
    return isinstance(error, (ConnectionError, asyncio.TimeoutError, asyncio.InvalidStateError))


def describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return str(error) or type(error).__name__


# ---------------------------------------------------------------- what the log says of an outage
# A server that refuses with BUSY answers; it is at its session (or queue) limit, not unreachable,
# and an operator reading the log needs to know which.


def is_busy(error: BaseException) -> bool:
    """True for the server's BUSY refusal (``ServerError.code``)."""
    return getattr(error, "code", None) == "BUSY"


def lost_contact_message(address: str, produced: int, failure: BaseException) -> str:
    if is_busy(failure):
        return (
            f"the server at {address} is busy (at its session or queue limit) after {produced} committed tokens: "
            f"{describe(failure)}; re-opening the session with them"
        )
    return f"lost the server at {address} after {produced} committed tokens: {describe(failure)}"


def retry_message(attempt: int, delay_s: float, failure: BaseException) -> str:
    """Starts with "reconnect attempt N", whatever the cause, so log watchers can count them."""
    if is_busy(failure):
        return f"reconnect attempt {attempt} in {delay_s:.2f} s: re-opening the session the busy server refused"
    return f"reconnect attempt {attempt} in {delay_s:.2f} s"


def fallback_message(address: str, produced: int, probe_interval_s: float, failure: BaseException) -> str:
    if is_busy(failure):
        return (
            f"server {address} is still busy (at its session limit) after {produced} final tokens: going on with "
            f"PROVISIONAL draft-only tokens (re-verified once it admits the session), asking again every "
            f"{probe_interval_s:.1f} s"
        )
    return (
        f"server {address} unreachable after {produced} final tokens: going on with PROVISIONAL draft-only tokens "
        f"(re-verified when it answers), probing every {probe_interval_s:.1f} s"
    )


async def wait_connected(channel: grpc.aio.Channel, timeout_s: float) -> None:
    """Wait until ``channel`` is connected; ConnectionError as soon as a connect attempt fails.

    ``channel_ready()`` would sit through gRPC's own reconnect backoff (a second and growing) on
    a refused connection; failing fast leaves the pacing to ``RecoveryPolicy``.
    """
    deadline = time.monotonic() + timeout_s
    state = channel.get_state(try_to_connect=True)
    while state is not grpc.ChannelConnectivity.READY:
        if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            raise ConnectionError("cannot connect")
        if state is grpc.ChannelConnectivity.SHUTDOWN:
            raise ConnectionError("the channel was closed")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise asyncio.TimeoutError(f"no connection within {timeout_s:g} s")
        try:
            await asyncio.wait_for(channel.wait_for_state_change(state), remaining)
        except asyncio.TimeoutError:
            raise asyncio.TimeoutError(f"no connection within {timeout_s:g} s") from None
        state = channel.get_state(try_to_connect=True)


async def wait_until_reachable(
    open_channel: Callable[[], grpc.aio.Channel], interval_s: float, timeout_s: float
) -> None:
    """Return once a fresh channel connects; tries every ``interval_s`` (after the first wait)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            async with open_channel() as channel:
                await wait_connected(channel, timeout_s)
            return
        except (ConnectionError, asyncio.TimeoutError) as error:
            logger.debug("server still unreachable: %s", describe(error))
