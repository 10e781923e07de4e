"""The ``cloud-ar`` mode's loop: the server decodes the whole continuation itself, one target
forward per token through the pass thread (batched with every other session's forwards), and
streams each token as it is chosen. The baseline the speculative modes are measured against."""

from __future__ import annotations

import asyncio

from edgespec.server.admission import SessionClock
from edgespec.server.encoding import decoded_token_reply, nothing_left_reply
from edgespec.server.metrics import NoMetrics, VerifierMetrics
from edgespec.server.pass_thread import BatchScheduler
from edgespec.server.session import ServerSession


async def decode_and_stream(
    session: ServerSession,
    scheduler: BatchScheduler,
    replies: asyncio.Queue[object],
    clock: SessionClock,
    metrics: VerifierMetrics = NoMetrics(),
) -> None:
    """Decode ``session`` token by token until it finishes (EOS or budget), streaming each token."""
    if session.finished:  # a resumed session whose text was already complete (EOS or budget)
        replies.put_nowait(nothing_left_reply())
    while not session.finished:
        clock.check_alive()
        result = await scheduler.submit(session.decode_job())
        token, finished, logprobs = result.value
        replies.put_nowait(decoded_token_reply(token, finished, result.forward_ms, logprobs))
        metrics.token_decoded(1)
