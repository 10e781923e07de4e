"""Drives the client's round core over a gRPC session: drafts on the device's worker thread,
messages from the server as they arrive, the core's actions carried out in order.

The event loop keeps reading the stream while the draft model computes: that is what lets a
pre-draft start the moment an early verdict lands and a pipelined block leave before the final
verdict arrives.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import Executor
from typing import Callable, Sequence

import torch

from edgespec.client.stream import ServerError, SessionStream
from edgespec.core.block import DraftBlock
from edgespec.core.config import DRAFT_SEED_OFFSET
from edgespec.core.edge import EdgeRounds
from edgespec.core.edge_events import (
    BlockDropped,
    BlockSent,
    CancelDraft,
    Draft,
    Drafted,
    EarlyVerdictArrived,
    EdgeAction,
    FinalVerdictArrived,
    SendBlock,
)
from edgespec.core.errors import ProtocolViolation
from edgespec.core.generation import Generation, TextEvent
from edgespec.core.logprobs import TokenLogprob
from edgespec.decoding.grammar import EdgeGrammar
from edgespec.models.draft import DraftRuntime
from edgespec.transport import edgespec_pb2 as pb
from edgespec.transport.codec import candidates_to_wire, distributions_to_wire, logprobs_from_wire, verdict_of

logger = logging.getLogger(__name__)


def join_distribution_rows(parts: list[torch.Tensor]) -> torch.Tensor:
    """The draft's distributions of provisional tokens kept by several decode steps, as one
    block's [gamma, vocab] rows (``Generation``'s ``join_rows``)."""
    return torch.cat(parts)


class EdgeRun:
    """One generation on the client: the core's shared state, the wall clock its events are
    timed by, and the caller's streaming callbacks: ``on_event`` hears every ``TextEvent``
    (final, provisional, retract); ``on_commit`` the tokens of final events only, right after
    ``on_logprobs`` hears the target's log-probabilities of those tokens (when asked for)."""

    def __init__(
        self,
        gen: Generation,
        on_commit: Callable[[list[int]], None] | None,
        on_event: Callable[[TextEvent], None] | None = None,
        on_logprobs: Callable[[list[TokenLogprob]], None] | None = None,
        grammar: EdgeGrammar | None = None,
    ) -> None:
        self.gen = gen
        # The grammar the draft drafts under (None: it drafts freely; the verifier masks anyway).
        self.grammar = grammar
        self._t0 = time.perf_counter()
        self._on_commit = on_commit
        self._on_event = on_event
        self._on_logprobs = on_logprobs
        # Every committed token's entry, in order (None: not asked for).
        self.logprobs: list[TokenLogprob] | None = [] if gen.config.logprobs is not None else None
        # Entries the server sent for tokens its verdict emits, until the commit that takes them.
        self._arrived: deque[TokenLogprob] = deque()
        gen.listen(self._deliver)

    def logprobs_arrived(self, rows: Sequence[pb.TokenLogprob], decided: int) -> None:
        """A verdict's (or decoded tokens') log-probabilities, before its commit. ``decided``: how
        many tokens the server decided in it; none sent for them means a server that predates them."""
        if self.logprobs is None:
            return
        if decided and not rows:
            raise ServerError("NO_LOGPROBS", "the verifier sent no log-probabilities: it predates them (upgrade it)")
        self._arrived.clear()  # a verdict clipped at a stop leaves entries no commit takes
        self._arrived.extend(logprobs_from_wire(rows))

    def _deliver(self, event: TextEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)
        if event.kind != "final":
            return
        if self.logprobs is not None:
            matched = self._take_logprobs(event.tokens)
            self.logprobs.extend(matched)
            if self._on_logprobs is not None:
                self._on_logprobs(matched)
        if self._on_commit is not None:
            self._on_commit(list(event.tokens))

    def _take_logprobs(self, tokens: Sequence[int]) -> list[TokenLogprob]:
        """The arrived entries of ``tokens``, matched by id: provisional tokens kept after an
        outage were never the target's and have none."""
        matched = []
        for token in tokens:
            if self._arrived and self._arrived[0].token == token:
                matched.append(self._arrived.popleft())
            elif self._arrived:
                expected = self._arrived[0].token
                logger.warning("log-probabilities for token %d do not match the committed %d: dropped", expected, token)
                self._arrived.clear()
        return matched

    def now(self) -> float:
        return time.perf_counter() - self._t0

    def commit(self, tokens: list[int]) -> None:
        self.gen.commit(tokens, self.now())

    def event(self, what: str) -> None:
        at = self.now()
        self.gen.record("link", what, at, at)


class RoundDriver:
    def __init__(self, run: EdgeRun, draft: DraftRuntime, draft_thread: Executor) -> None:
        self.run = run
        self.gen = run.gen
        self.draft = draft
        self.draft_thread = draft_thread
        self.rounds = EdgeRounds(run.gen)
        self._drafts: dict[asyncio.Future, tuple[int, threading.Event]] = {}
        self._stream: SessionStream | None = None
        self._unsent: list[SendBlock] = []

    def start(self) -> None:
        """Start drafting the first block (while the server prefills the prompt)."""
        self._apply_sync(self.rounds.started())

    async def play(self, stream: SessionStream) -> None:
        """Run rounds until the generation finishes (or the stream fails: then raise)."""
        self._stream = stream
        try:
            unsent, self._unsent = self._unsent, []
            await self._apply(list(unsent))
            while not self.gen.finished:
                reader = stream.next_message()
                await asyncio.wait({reader, *self._drafts}, return_when=asyncio.FIRST_COMPLETED)
                for future in [f for f in self._drafts if f.done()]:
                    draft_id, _ = self._drafts.pop(future)
                    block, start, end = future.result()
                    drafted = Drafted(draft_id=draft_id, block=block, start=start, end=end)
                    await self._apply(self.rounds.drafted(drafted))
                if reader.done() and not self.gen.finished:
                    await self._apply(self._on_message(await stream.receive()))
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop every draft still running: their premise died with the session or the text is done."""
        for future, (_, stop) in self._drafts.items():
            stop.set()
            future.cancel()
        self._drafts.clear()

    def _on_message(self, message: pb.ServerMessage) -> list[EdgeAction]:
        kind, now = message.WhichOneof("kind"), self.run.now()
        try:
            if kind == "early":
                early = message.early
                return self.rounds.early_verdict_arrived(
                    EarlyVerdictArrived(round=early.round, layer=early.exit_layer, verdict=verdict_of(early), at=now)
                )
            if kind == "final":
                final = message.final
                self.run.gen.stats.server_queued_s += (
                    final.queued_ms / 1000
                )  # apart from the pass itself: batching's wait
                self.run.logprobs_arrived(final.logprobs, final.accepted + 1)
                return self.rounds.final_verdict_arrived(
                    FinalVerdictArrived(
                        round=final.round,
                        verdict=verdict_of(final),
                        server_finished=final.finished,
                        pipelined=final.pipelined,
                        verify_s=final.verify_ms / 1000,
                        at=now,
                    )
                )
            if kind == "dropped":
                return self.rounds.block_dropped(BlockDropped(round=message.dropped.round))
        except ProtocolViolation as error:
            raise ServerError("BAD_REPLY", str(error)) from None
        raise ServerError("BAD_REPLY", f"unexpected {kind} message in round {self.rounds.round}")

    async def _apply(self, actions: list[EdgeAction]) -> None:
        for action in actions:
            if isinstance(action, SendBlock):
                await self._send(action)
                if action.assumes is None:  # its wait starts now, not when it was drafted
                    self.rounds.block_sent(BlockSent(round=action.round, at=self.run.now()))
            else:
                self._apply_sync([action])

    def _apply_sync(self, actions: list[EdgeAction]) -> None:
        for action in actions:
            if isinstance(action, Draft):
                self._start_draft(action)
            elif isinstance(action, CancelDraft):
                for draft_id, stop in self._drafts.values():
                    if draft_id == action.id:
                        stop.set()
            elif isinstance(action, SendBlock):
                self._unsent.append(action)  # before the session opened
            # Commit: the generation already told the listeners (Generation.commit).

    def _start_draft(self, action: Draft) -> None:
        stop = threading.Event()
        config, now, draft = self.gen.config, self.run.now, self.draft
        with_candidates = config.wants_early_verdicts(self.gen.mode)
        with_alternatives = config.wants_alternatives(self.gen.mode)
        grammar = self.run.grammar.for_draft(self.gen.committed, action.sequence) if self.run.grammar else None
        constrained = {"grammar": grammar} if grammar is not None else {}
        known = self.gen.provisional_block(action.sequence, action.gamma)
        if known is not None:
            # Re-verifying after an outage: the draft already decided these tokens (and kept its
            # distributions), so they go to the target as they are, no drafting.
            done = asyncio.get_running_loop().create_future()
            done.set_result((known, now(), now()))
            self._drafts[done] = (action.id, stop)
            return

        def work() -> tuple[DraftBlock, float, float]:
            start = now()
            if stop.is_set():  # cancelled while it waited behind another draft: not one step for it
                return DraftBlock([]), start, start
            block = draft.draft(
                action.sequence,
                action.gamma,
                config.sampling,
                seed=config.seed + DRAFT_SEED_OFFSET,
                should_stop=stop.is_set,
                candidates=with_candidates,
                alternatives=with_alternatives,
                stop_below=config.draft_stop_below(),
                min_tokens=action.min_tokens,
                **constrained,
            )
            return block, start, now()

        future = asyncio.get_running_loop().run_in_executor(self.draft_thread, work)
        self._drafts[future] = (action.id, stop)

    async def _send(self, send: SendBlock) -> None:
        assert self._stream is not None
        block = send.block
        message = pb.DraftBlock(
            round=send.round,
            tokens=block.tokens,
            probs=distributions_to_wire(block.probs),
            candidates=candidates_to_wire(block.candidates),
        )
        if send.assumes is not None:
            assumed_round, verdict = send.assumes
            message.assumes.CopyFrom(
                pb.Assumption(round=assumed_round, accepted=verdict.accepted, next_token=verdict.next_token)
            )
        await self._stream.send(pb.ClientMessage(block=message))
