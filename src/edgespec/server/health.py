"""What a prober may ask the verifier without opening a session: is it serving, and what are its limits.

Two gRPC services beside ``Verifier``:

- ``grpc.health.v1.Health`` (the standard one a load balancer or ``grpc_health_probe`` speaks):
  SERVING for the whole server (``""``) and for ``edgespec.v1.Verifier`` only while a target model
  is loaded and its pass thread runs, NOT_SERVING once the server begins its shutdown (while it
  drains its open sessions) or when the pass thread is gone.
- ``edgespec.v1.VerifierInfo.GetLimits``: the session limits a request must fit (prompt tokens,
  new tokens, context window, message size), so an edge refuses an oversized request itself,
  before it tokenizes more than it must or opens a session.

``add_probe_services(server, service, max_message_bytes)`` registers both; it is the one line
``server/app.py`` needs.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from edgespec.models.target import SLIDING_WINDOW_BLOCK_ROOM
from edgespec.transport import edgespec_pb2 as pb
from edgespec.transport import edgespec_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

VERIFIER_SERVICE = "edgespec.v1.Verifier"
# A Watch call re-reads the status this often: the model's state has no event to wait on.
WATCH_POLL_S = 1.0
UINT32_MAX = 2**32 - 1


def context_tokens(runtime: Any) -> int:
    """The most prompt + new tokens a session may hold (0: no window): the context length, or
    under a sliding window the length up to which its KV cache can still be rolled back."""
    bounds = []
    if runtime.context_length is not None:
        bounds.append(int(runtime.context_length))
    if runtime.sliding_window is not None:
        bounds.append(int(runtime.sliding_window) - SLIDING_WINDOW_BLOCK_ROOM - 1)
    return max(0, min(bounds)) if bounds else 0


class VerifierHealth(health.aio.HealthServicer):
    """grpc.health.v1 whose Verifier status follows the service: SERVING only with a model loaded."""

    def __init__(self, service: Any) -> None:
        super().__init__()
        self.verifier = service
        self.shutting_down = False

    def verifier_status(self) -> int:
        """SERVING while the service would serve a new session (``VerifierService.serving``: a model
        loaded, its pass thread running, no shutdown begun) and this server has not begun its own."""
        serving = bool(getattr(self.verifier, "serving", False)) and not self.shutting_down
        return health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> health_pb2.HealthCheckResponse:  # noqa: N802
        if request.service in ("", VERIFIER_SERVICE):
            return health_pb2.HealthCheckResponse(status=self.verifier_status())
        return await super().Check(request, context)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:  # noqa: N802
        if request.service not in ("", VERIFIER_SERVICE):
            await super().Watch(request, context)
            return
        last = None
        while True:
            status = self.verifier_status()
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            await asyncio.sleep(WATCH_POLL_S)

    async def enter_graceful_shutdown(self) -> None:
        """NOT_SERVING from now on, so a load balancer stops sending new sessions."""
        self.shutting_down = True
        await super().enter_graceful_shutdown()


class LimitsService(pb_grpc.VerifierInfoServicer):
    """``GetLimits``: the limits ``ServerSession`` and gRPC enforce, read from the running service."""

    def __init__(self, service: Any, max_message_bytes: int) -> None:
        self.verifier = service
        self.max_message_bytes = max_message_bytes

    def limits(self) -> pb.ServerLimits:
        limits = self.verifier.limits
        return pb.ServerLimits(
            max_prompt_tokens=min(int(limits.max_prompt_tokens), UINT32_MAX),
            max_new_tokens=min(int(limits.max_new_tokens), UINT32_MAX),
            context_tokens=min(context_tokens(self.verifier.runtime), UINT32_MAX),
            max_message_bytes=min(int(self.max_message_bytes), UINT32_MAX),
            max_block=min(int(limits.max_block), UINT32_MAX),
        )

    async def GetLimits(self, request: pb.LimitsRequest, context: grpc.aio.ServicerContext) -> pb.ServerLimits:  # noqa: N802
        return self.limits()


def add_probe_services(server: grpc.aio.Server, service: Any, max_message_bytes: int) -> VerifierHealth:
    """Register the health and limits services on ``server``; the health servicer, whose
    ``enter_graceful_shutdown`` a stopping server may await."""
    checker = VerifierHealth(service)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    pb_grpc.add_VerifierInfoServicer_to_server(LimitsService(service, max_message_bytes), server)
    return checker
