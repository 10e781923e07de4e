"""An ASGI middleware that bounds a request body in bytes and in time before the app sees it.

A body is read here, at most ``max_body_bytes`` of it, and handed to the app from memory; a
longer one is refused with 413, a body still arriving after ``body_timeout_s`` with 408, both in
OpenAI's error shape. A declared Content-Length over the limit is refused without buffering a
byte: the rest is read and dropped (up to a bound) so the client, which sends its whole body
before it reads an answer, sees the 413 instead of a reset connection.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from edgespec.openai_api.errors import OpenAIError
from edgespec.openai_api.limits import RequestLimits

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# How much of an oversized body is read and dropped before the connection is given up: enough
# for a client that just sent too much, bounded (and by the body timeout) for one that never stops.
# Dropped bytes cost no memory, only the time to read them.
DRAIN_BYTES = 64 * 1024 * 1024


def too_large(limit: int) -> OpenAIError:
    return OpenAIError(
        413, f"the request body exceeds the limit of {limit} bytes", "invalid_request_error", None, "request_too_large"
    )


def too_slow(timeout_s: float) -> OpenAIError:
    return OpenAIError(
        408, f"the request body did not arrive within {timeout_s:g} s", "invalid_request_error", None, "request_timeout"
    )


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Wraps ``app``; ``on_refusal`` sees every error this middleware answers (for the metrics)."""

    def __init__(
        self, app: App, limits: RequestLimits, on_refusal: Callable[[OpenAIError], None] = lambda error: None
    ) -> None:
        self.app = app
        self.limits = limits
        self.on_refusal = on_refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name.lower(): value for name, value in scope.get("headers", ())}
        limit = self.limits.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0:
                bad = OpenAIError(
                    400, "the Content-Length header is not a number", "invalid_request_error", None, "invalid_request"
                )
                await self.refuse(bad, scope, receive, send)
                return
            if length > limit:
                logger.info(
                    "refused a %d-byte body to %s: over the limit of %d bytes", length, scope.get("path"), limit
                )
                # A client waiting for "100 Continue" has sent nothing yet: answer at once.
                if headers.get(b"expect", b"").lower() != b"100-continue":
                    await self.drain(receive, max(DRAIN_BYTES, 4 * limit))
                await self.refuse(too_large(limit), scope, receive, send)
                return
        try:
            body = await self.read_body(receive, limit)
        except BodyTooLarge:
            logger.info("refused a streamed body to %s: over the limit of %d bytes", scope.get("path"), limit)
            await self.drain(receive, max(DRAIN_BYTES, 4 * limit))
            await self.refuse(too_large(limit), scope, receive, send)
            return
        except asyncio.TimeoutError:
            logger.info("refused a body to %s: not complete after %g s", scope.get("path"), self.limits.body_timeout_s)
            await self.refuse(too_slow(self.limits.body_timeout_s), scope, receive, send)
            return
        if body is None:  # the client left while sending
            return
        await self.app(scope, replay(body, receive), send)

    async def read_body(self, receive: Receive, limit: int) -> bytes | None:
        """The whole body, or None when the client disconnected; BodyTooLarge past ``limit``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_timeout_s
        parts: list[bytes] = []
        size = 0
        while True:
            message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge()
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    async def drain(self, receive: Receive, budget: int) -> None:
        """Read and drop the rest of a refused body, within ``budget`` bytes and the body timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_timeout_s
        dropped = 0
        try:
            while dropped <= budget:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
                if message["type"] != "http.request":
                    return
                dropped += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return
        except asyncio.TimeoutError:
            return

    async def refuse(self, error: OpenAIError, scope: Scope, receive: Receive, send: Send) -> None:
        self.on_refusal(error)
        response = error.response()
        response.headers["connection"] = "close"
        await response(scope, receive, send)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands out the buffered body once, then waits on the client as before
    (for its disconnect)."""
    sent = False

    async def receive_again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_again
