"""Token authentication for every stream, before any handler (and so the model) is reached."""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Awaitable, Callable

import grpc

from edgespec.transport.security import AUTH_METADATA_KEY, AUTH_SCHEME

logger = logging.getLogger(__name__)

# How long a refusal waits for the caller's first message; see _refuse.
FIRST_MESSAGE_WAIT_S = 2.0


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses, with UNAUTHENTICATED, any call whose metadata lacks `authorization: Bearer <token>`.

    Runs for every method, known or not, so an unauthenticated caller learns nothing about the
    service but that it needs a token.
    """

    def __init__(self, token: str) -> None:
        self._expected = (AUTH_SCHEME + token).encode("ascii")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        presented = [value for key, value in handler_call_details.invocation_metadata or () if key == AUTH_METADATA_KEY]
        if not presented:
            return _refuse("this server requires an auth token (authorization: Bearer <token>)")
        # Constant-time comparison: the time to refuse says nothing about how much of a guess matched.
        offered = presented[0] if isinstance(presented[0], bytes) else presented[0].encode("utf-8", "replace")
        if len(presented) > 1 or not hmac.compare_digest(offered, self._expected):
            logger.info("refused a call to %s: wrong auth token", handler_call_details.method)
            return _refuse("the auth token is not valid for this server")
        return await continuation(handler_call_details)


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
