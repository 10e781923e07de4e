"""Is the cloud verifier serving? The question `/ready` asks, answered by the verifier's own
grpc.health.v1 (what `grpc_health_probe` asks too), not by a TCP connect: a verifier that is
draining for its shutdown still accepts connections but reports NOT_SERVING.

A load balancer may probe `/ready` often, and every edge-serve behind it would pass each probe on
to the verifier; so an answer is reused for ``interval_s`` (the probe interval): the state `/ready`
reports is never older than that, and the verifier hears at most one check per interval from each
edge. ``timeout_s`` bounds a check against a verifier that accepts but does not answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgespec.client.channel import open_channel
from edgespec.client.recovery import describe
from edgespec.transport import edgespec_pb2 as pb
from edgespec.transport.security import ClientSecurity

logger = logging.getLogger(__name__)

# The service name the verifier's health servicer reports on ("edgespec.v1.Verifier").
VERIFIER_SERVICE = pb.DESCRIPTOR.services_by_name["Verifier"].full_name


@dataclass(frozen=True)
class ReadyProbe:
    """How `/ready` asks the cloud: an answer is reused for ``interval_s``; a check waits ``timeout_s``."""

    interval_s: float = 2.0
    timeout_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.interval_s >= 0:
            raise ValueError(f"the ready probe interval must be >= 0 seconds, got {self.interval_s}")
        if not self.timeout_s > 0:
            raise ValueError(f"the ready probe timeout must be > 0 seconds, got {self.timeout_s}")


async def serving_problem(address: str, security: ClientSecurity, timeout_s: float) -> str | None:
    """None when the verifier at ``address`` answers SERVING for the Verifier service; else why not."""
    async with open_channel(address, security) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=VERIFIER_SERVICE), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.UNIMPLEMENTED:
                # It answered, without a health service (a verifier that predates it, or a proxy
                # that forwards only the Verifier service): reachable is all there is to know.
                return None
            if error.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                return f"the cloud verifier at {address} did not answer its health check within {timeout_s:g} s"
            return f"the cloud verifier at {address} is unreachable: {describe(error)}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return f"the cloud verifier at {address} reports {status} (shutting down, or its model not loaded)"
    return None


class CloudHealth:
    """The verifier's serving status, checked at most once per probe interval."""

    def __init__(self, address: str, security: ClientSecurity, probe: ReadyProbe = ReadyProbe()) -> None:
        self.address = address
        self.security = security
        self.probe = probe
        self._problem: str | None = None
        self._checked_at: float | None = None  # when the last check began (monotonic)
        self._lock: asyncio.Lock | None = None

    async def problem(self) -> str | None:
        """Why the verifier cannot serve now (None: it serves), at most one probe interval old."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # concurrent probes share one check
            if self._checked_at is None or time.monotonic() - self._checked_at >= self.probe.interval_s:
                started = time.monotonic()
                problem = await serving_problem(self.address, self.security, self.probe.timeout_s)
                if problem != self._problem:
                    logger.info("cloud verifier at %s: %s", self.address, problem or "serving")
                self._problem, self._checked_at = problem, started
            return self._problem
