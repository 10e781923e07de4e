"""The speculative modes' loop (``sd`` and its early-exit and pre-drafting variants): the client
drafts, the server verifies. Each block goes to the session's round core, which says what to do
(verify it, drop a pipelined block, refuse it); this loop does it: runs the verify forwards on the
pass thread one after another, streams early verdicts from inside a forward the moment an exit
clears its threshold, and sends each final verdict with its forward's timings."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from edgespec.core.verifier import Drop, ExitReached, OutOfOrder, Reject, SendFinal, ServerAction, Verified, Verify
from edgespec.decoding.early import EarlyVerdict
from edgespec.models.target import TargetRuntime
from edgespec.server.encoding import (
    END_OF_STREAM,
    dropped_reply,
    early_verdict_reply,
    error_code_name,
    error_reply,
    final_verdict_reply,
    incoming_block,
    internal_error_reply,
    out_of_order_error,
)
from edgespec.server.metrics import NoMetrics, VerifierMetrics
from edgespec.server.pass_thread import BatchScheduler
from edgespec.server.refusals import Refused
from edgespec.server.session import ServerSession
from edgespec.transport import edgespec_pb2 as pb
from edgespec.transport.codec import ProtocolError
from edgespec.transport.validation import check_block

logger = logging.getLogger(__name__)


class SpeculativeLoop:
    """One session's blocks in, its verdicts out; at most one verify forward in flight (the round
    core never asks for a second while one runs)."""

    def __init__(
        self,
        session: ServerSession,
        scheduler: BatchScheduler,
        runtime: TargetRuntime,
        replies: asyncio.Queue[object],
        max_block: int,
        exit_candidates: bool,
        metrics: VerifierMetrics = NoMetrics(),
    ) -> None:
        self.session = session
        self.scheduler = scheduler
        self.runtime = runtime
        self.replies = replies
        self.max_block = max_block
        # Exits score only the draft's candidate ids when a block carries them.
        self.exit_candidates = exit_candidates
        self._verifying: asyncio.Task | None = None  # the session's forwards in flight, if any
        self.metrics = metrics
        # How the forwards ended the session, when they did ("error", "failed"): the servicer,
        # which only sees its stream cancelled then, reports it.
        self.failure: str | None = None

    def receive(self, block: pb.DraftBlock) -> None:
        """Check a block, hand it to the round core, and carry out what it says: send drops, start
        the forward it asks for."""
        session = self.session
        greedy = session.sampling.greedy
        check_block(block, self.runtime.vocab_size, self.max_block, greedy)
        incoming = incoming_block(block, self.runtime.vocab_size, greedy, self.exit_candidates)
        try:
            actions = session.rounds.block_arrived(incoming)
        except OutOfOrder as error:
            raise out_of_order_error(error) from None
        verify = send_drops_and_refusals(actions, self.replies, self.metrics)
        if verify is not None:
            self._verifying = asyncio.ensure_future(self._verify_until_idle(verify))

    async def finish_in_flight(self) -> None:
        """Wait for the forward in flight: a client may half-close right after its last block."""
        if self._verifying is not None:
            await self._verifying

    async def cancel(self) -> None:
        """Stop the forward in flight (the session is over)."""
        if self._verifying is not None:
            self._verifying.cancel()
            await asyncio.gather(self._verifying, return_exceptions=True)

    async def _verify_until_idle(self, verify: Verify) -> None:
        """Run the forwards the core asks for, one after another, until it asks for none."""
        session, replies = self.session, self.replies
        rounds = session.rounds
        try:
            while True:
                on_early = self._early_streamer(verify.block.round) if rounds.early_verdicts else None
                result = await self.scheduler.submit(session.verify_job(verify, on_early))
                verdict, judge, logprobs = result.value
                actions = rounds.verified(Verified(verify=verify, verdict=verdict))
                self.runtime.rollback(rounds.sequence, kv=session.kv)
                final = actions[0]
                assert isinstance(final, SendFinal)
                replies.put_nowait(final_verdict_reply(final, verdict, result, judge, logprobs))
                self.metrics.round_verified(
                    pb.SPECULATIVE, len(verify.block.tokens), verdict.accepted, len(final.committed), final.pipelined
                )
                following = send_drops_and_refusals(actions[1:], replies, self.metrics)
                if following is None:
                    return
                verify = following
        except asyncio.CancelledError:
            raise
        except (ProtocolError, Refused) as error:
            logger.info("session %s: %s", session.id, error)
            self.failure = "error"
            self.metrics.refused(error_code_name(error))
            replies.put_nowait(error_reply(error))
            replies.put_nowait(END_OF_STREAM)
        except Exception as error:  # a bug must end this session, never the server
            logger.exception("session %s failed", session.id)
            self.failure = "failed"
            replies.put_nowait(internal_error_reply(error))
            replies.put_nowait(END_OF_STREAM)

    def _early_streamer(self, round_index: int) -> Callable[[EarlyVerdict], None]:
        """The callback a verify forward calls (on the pass thread) when an exit is confident: the
        round core decides on the event loop whether the early verdict goes out."""
        loop = asyncio.get_running_loop()
        rounds, replies, metrics = self.session.rounds, self.replies, self.metrics

        def stream_early(early: EarlyVerdict) -> None:
            def deliver() -> None:
                reached = ExitReached(
                    round=round_index,
                    layer=early.layer,
                    verdict=early.verdict,
                    confidence=early.confidence,
                    elapsed_s=early.elapsed_s,
                    streamed=early.streamed,
                )
                for action in rounds.exit_reached(reached):
                    replies.put_nowait(
                        early_verdict_reply(
                            action.round,
                            action.layer,
                            action.verdict,
                            action.confidence,
                            action.elapsed_s,
                        )
                    )
                    metrics.early_verdict(action.layer)

            loop.call_soon_threadsafe(deliver)

        return stream_early


def send_drops_and_refusals(
    actions: list[ServerAction], replies: asyncio.Queue[object], metrics: VerifierMetrics = NoMetrics()
) -> Verify | None:
    """Send the drops the round core decided, refuse what it rejected; the forward it asks for
    next, if any (a final verdict is sent by the verify loop, which knows the forward's timings)."""
    following = None
    for action in actions:
        if isinstance(action, Drop):
            replies.put_nowait(dropped_reply(action.round))
            metrics.block_dropped()
        elif isinstance(action, Reject):
            raise ProtocolError(pb.OUT_OF_ORDER, action.reason)
        elif isinstance(action, Verify):
            following = action
        elif isinstance(action, SendFinal):
            raise AssertionError("a final verdict comes from the verify loop, with its forward's timings")
    return following
