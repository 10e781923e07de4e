"""Token authentication for every stream, before any handler (and so the model) is reached; health
probes excepted, so a load balancer or ``grpc_health_probe`` needs no token."""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Awaitable, Callable, Iterable

import grpc

from edgespec.transport.security import AUTH_METADATA_KEY, AUTH_SCHEME

logger = logging.getLogger(__name__)

# How long a refusal waits for the caller's first message; see _refuse.
FIRST_MESSAGE_WAIT_S = 2.0
# grpc.health.v1 says only whether the server serves, which a prober must learn without holding the
# token; it reaches no model and no session.
UNGUARDED_METHOD_PREFIX = "/grpc.health.v1.Health/"


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses, with UNAUTHENTICATED, any call whose metadata lacks `authorization: Bearer <token>`.

    Runs for every method but the health service's, known or not, so an unauthenticated caller
    learns nothing about the service but that it needs a token (and whether it serves).
    ``on_refused`` hears of each refusal (the metrics count them).
    """

    def __init__(self, token: str, on_refused: Callable[[str], None] | None = None) -> None:
        self._expected = expected_header(token)
        self._on_refused = on_refused

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if handler_call_details.method.startswith(UNGUARDED_METHOD_PREFIX):
            return await continuation(handler_call_details)
        refusal = refusal_for(handler_call_details.invocation_metadata or (), self._expected)
        if refusal is not None:
            logger.info("refused a call to %s: %s", handler_call_details.method, refusal)
            if self._on_refused is not None:
                self._on_refused("UNAUTHENTICATED")
            return _refuse(refusal)
        return await continuation(handler_call_details)


def expected_header(token: str) -> bytes:
    """The exact `authorization` value a client holding ``token`` sends."""
    return (AUTH_SCHEME + token).encode("ascii")


def refusal_for(metadata: Iterable[tuple[str, str | bytes]], expected: bytes) -> str | None:
    """Why a call with this metadata is refused, or None when it carries the expected token.

    Shared by the gRPC interceptor and the Ray Serve replica (whose proxy runs no interceptor)."""
    presented = [value for key, value in metadata if key == AUTH_METADATA_KEY]
    if not presented:
        return "this server requires an auth token (authorization: Bearer <token>)"
    # Constant-time comparison: the time to refuse says nothing about how much of a guess matched.
    offered = presented[0] if isinstance(presented[0], bytes) else presented[0].encode("utf-8", "replace")
    if len(presented) > 1 or not hmac.compare_digest(offered, expected):
        return "the auth token is not valid for this server"
    return None


def _refuse(message: str) -> grpc.RpcMethodHandler:
    async def refuse(request_iterator: object, context: grpc.aio.ServicerContext) -> None:
        # Take the caller's first message (raw bytes, never decoded) before refusing. grpcio's
        # asyncio client reports a write that races the end of its call as INTERNAL "Internal
        # error from Core" and loses the server's status (grpc/grpc#36066); a client that writes
        # its open and then reads (every client here) thus always sees UNAUTHENTICATED.
        try:
            await asyncio.wait_for(context.read(), FIRST_MESSAGE_WAIT_S)
        except asyncio.TimeoutError:
            pass
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    # A stream-stream handler fits every method: the refusal reads no request and sends no reply.
    return grpc.stream_stream_rpc_method_handler(refuse)
