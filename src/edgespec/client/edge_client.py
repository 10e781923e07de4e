"""The edge client: drafts on the device, verifies over gRPC, owns the committed text.

Drafting runs on a worker thread so the event loop keeps reading the stream while the draft
model computes: that is what lets a pre-draft start the moment an early verdict lands and a
pipelined pre-draft leave before the final verdict arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Sequence

import grpc

from edgespec.client.channel import keepalive_options, open_channel, session_call
from edgespec.client.draft_only_decoding import decode_edge_only, decode_provisional
from edgespec.client.recovery import (
    TRANSIENT_SERVER_CODES,
    Outage,
    RecoveryPolicy,
    describe,
    fallback_message,
    is_transient,
    lost_contact_message,
    retry_message,
    wait_connected,
    wait_until_reachable,
)
from edgespec.client.round_driver import EdgeRun, RoundDriver, join_distribution_rows
from edgespec.client.stream import ConnectionLost, ServerError, SessionStream, open_session
from edgespec.client.sync_bridge import run_sync
from edgespec.core.cloud_ar import CloudRoundDecided, ReceiveOnlyRounds, ReceiveState, TokensDecoded
from edgespec.core.config import GenerationConfig, GenerationResult
from edgespec.core.generation import Generation, TextEvent
from edgespec.core.logprobs import TokenLogprob
from edgespec.core.modes import Mode
from edgespec.decoding.grammar import EdgeGrammar
from edgespec.models.draft import DraftRuntime
from edgespec.transport import edgespec_pb2 as pb
from edgespec.transport.security import INSECURE, ClientSecurity

__all__ = ["ClientOptions", "ConnectionLost", "EdgeClient", "ServerError", "TextEvent"]
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientOptions:
    connect_timeout_s: float = 10.0
    # No message from the server for this long means it is gone (a verify takes well under this).
    read_timeout_s: float = 120.0
    # HTTP/2 pings find a peer that went silent without closing anything (a cut link, a frozen
    # host) long before the read deadline. The server accepts pings no closer than 5 s apart.
    keepalive_s: float = 10.0
    keepalive_timeout_s: float = 5.0
    recovery: RecoveryPolicy = RecoveryPolicy()
    security: ClientSecurity = INSECURE
    # Keep the draft's KV cache from one generation to the next instead of resetting it: the
    # next prompt prefills only what follows the prefix it shares with what the cache holds
    # (lossless: TrackedCache.sync keeps exactly the common prefix). For a loop or a chat that
    # re-sends a growing prompt; pair it with the server's --prefix-cache-tokens.
    reuse_draft_cache: bool = False


class EdgeClient:
    def __init__(
        self,
        address: str,
        draft: DraftRuntime | None = None,
        options: ClientOptions = ClientOptions(),
        tokenizer: Any = None,
    ) -> None:
        """``tokenizer``: the draft's, for drafting under a generation's grammar (without it the
        draft drafts freely and only the verifier masks: still lossless, fewer tokens accepted)."""
        self.address = address
        self.draft = draft
        self.options = options
        self.tokenizer = tokenizer
        self._draft_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="draft")

    # ------------------------------------------------------------------ public API

    def generate(
        self,
        prompt_ids: Sequence[int],
        mode: Mode,
        config: GenerationConfig,
        on_commit: Callable[[list[int]], None] | None = None,
        on_event: Callable[[TextEvent], None] | None = None,
        on_logprobs: Callable[[list[TokenLogprob]], None] | None = None,
    ) -> GenerationResult:
        """``on_commit`` hears final tokens only; ``on_event`` every ``TextEvent`` (final,
        provisional tokens during an outage, and retractions of them); ``on_logprobs`` (with
        ``config.logprobs``) the target's log-probabilities of each commit's tokens, just before it."""
        return run_sync(self.agenerate(prompt_ids, mode, config, on_commit, on_event, on_logprobs))

    def stream(
        self, prompt_ids: Sequence[int], mode: Mode, config: GenerationConfig, events: bool = False
    ) -> Iterator[list[int]] | Iterator[TextEvent]:
        """Yield each round's final tokens as they are decided (``events=True``: every
        ``TextEvent``, provisional tokens and retractions included); raises what generate raises."""
        chunks: queue.Queue[object] = queue.Queue()
        done = object()

        def run() -> None:
            try:
                if events:
                    self.generate(prompt_ids, mode, config, on_event=chunks.put)
                else:
                    self.generate(prompt_ids, mode, config, on_commit=chunks.put)
                chunks.put(done)
            except BaseException as error:  # handed to the consumer's thread
                chunks.put(error)

        threading.Thread(target=run, daemon=True, name="edgespec-stream").start()
        while True:
            item = chunks.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]

    async def agenerate(
        self,
        prompt_ids: Sequence[int],
        mode: Mode,
        config: GenerationConfig,
        on_commit: Callable[[list[int]], None] | None = None,
        on_event: Callable[[TextEvent], None] | None = None,
        on_logprobs: Callable[[list[TokenLogprob]], None] | None = None,
    ) -> GenerationResult:
        if mode.uses_draft and self.draft is None:
            raise ValueError(f"mode {mode.value} needs a draft model on the edge")
        if mode is Mode.EDGE_ONLY and config.logprobs is not None:
            raise ValueError("log-probabilities are the target's: edge-only mode has no target to give them")
        if mode is Mode.EDGE_ONLY and config.grammar is not None:
            raise ValueError("a grammar constrains the target: edge-only mode has no target to constrain")
        gen = Generation(prompt_ids, mode, config, join_rows=join_distribution_rows)
        run = EdgeRun(gen, on_commit, on_event, on_logprobs, self._draft_grammar(config, len(prompt_ids)))
        if self.draft is not None and not self.options.reuse_draft_cache:
            # On the draft thread: a pre-draft of the last generation may still be running there
            # (stopped, but not yet at its next step), and the cache is that thread's.
            await asyncio.get_running_loop().run_in_executor(self._draft_thread, self.draft.reset)
        try:
            if mode is Mode.EDGE_ONLY:
                await decode_edge_only(run, self.draft, self._draft_thread)
            else:
                await self._with_recovery(run)
        except ServerError as error:
            error.partial = self._result(run)
            raise
        return self._result(run)

    def _draft_grammar(self, config: GenerationConfig, prompt_len: int) -> EdgeGrammar | None:
        if config.grammar is None or self.tokenizer is None or self.draft is None:
            return None
        runtime = getattr(self.draft, "runtime", self.draft)  # edge-serve wraps the runtime
        vocab_size = getattr(runtime, "vocab_size", None)
        if vocab_size is None:
            return None
        eos = sorted(config.eos_ids)
        return EdgeGrammar(config.grammar, self.tokenizer, int(vocab_size), prompt_len, eos)

    @staticmethod
    def _result(run: EdgeRun) -> GenerationResult:
        run.gen.stats.total_s = run.now()
        if run.grammar is not None:
            run.gen.stats.edge_mask_s = run.grammar.clock.seconds
        return GenerationResult(tokens=run.gen.new_tokens, stats=run.gen.stats, logprobs=run.logprobs)

    # ------------------------------------------------------------------ sessions and outages

    def _open_channel(self) -> grpc.aio.Channel:
        options = keepalive_options(self.options.keepalive_s, self.options.keepalive_timeout_s)
        return open_channel(self.address, self.options.security, options)

    async def _with_recovery(self, run: EdgeRun) -> None:
        """Run sessions until the generation finishes, re-opening after each outage with the
        final tokens so far; past the quick retries, decode provisional tokens with the draft
        until the server answers again and re-verify them (or, with fallback off, keep trying
        within the outage budget and then raise ConnectionLost)."""
        policy, gen = self.options.recovery, run.gen
        outage: Outage | None = None
        returning = False  # the next session ends a fallback

        def opened() -> None:
            nonlocal outage, returning
            if outage is not None:
                gen.stats.reconnects += 1
                run.event("reconnected")
                logger.info("re-opened the session after %d committed tokens", gen.produced)
                outage = None
            if returning:
                gen.stats.switchbacks += 1
                run.event(f"back to {gen.mode.value}")
                logger.warning("the server is back: %s again after %d tokens", gen.mode.value, gen.produced)
                returning = False

        while not gen.finished:
            try:
                await self._session(run, opened)
                return
            except ServerError as error:
                if error.code not in TRANSIENT_SERVER_CODES:
                    raise
                failure: BaseException = error
            except (grpc.aio.AioRpcError, ConnectionError, asyncio.TimeoutError, asyncio.InvalidStateError) as error:
                if isinstance(error, grpc.aio.AioRpcError) and not is_transient(error):
                    # The server refused (a bad token, an oversized message): no outage, and no retry.
                    raise ServerError(error.code().name, error.details() or "") from error
                failure = error
            if outage is None:
                outage = Outage(policy if self.draft is not None else replace(policy, fallback=False))
                gen.stats.connection_losses += 1
                run.event("connection lost")
                logger.warning(lost_contact_message(self.address, gen.produced, failure))
            delay = outage.next_delay()
            if delay is not None:
                logger.info(retry_message(outage.attempts, delay, failure))
                await asyncio.sleep(delay)
                continue
            if not policy.fallback or self.draft is None:
                tried = f" ({outage.attempts} reconnect attempts)" if outage.attempts else ""
                raise ConnectionLost(
                    f"lost the server at {self.address} after {gen.produced} committed tokens{tried}: "
                    f"{describe(failure)}",
                    self._result(run),
                ) from failure
            if not await self._fall_back(run, outage, failure, repeated=returning):
                return  # the server never came back: the provisional tokens were kept, flagged
            # The server answered a probe: quick retries again if the re-open fails after all.
            outage, returning = outage.again(), True

    async def _session(self, run: EdgeRun, opened: Callable[[], None]) -> None:
        """One session with the server, from Open (with the committed tokens) to the end of
        the generation. A round whose verdict never arrived committed nothing, so a failure here
        loses no text: the next session simply redoes that round."""
        gen = run.gen
        async with self._open_channel() as channel:
            await wait_connected(channel, self.options.connect_timeout_s)
            stream = SessionStream(session_call(channel, self.options.security), gen.stats, self.options.read_timeout_s)
            driver = None
            try:
                if gen.mode.edge_rounds:
                    assert self.draft is not None
                    # Draft the first block (the draft's own prefill included) while the server
                    # prefills the prompt, instead of after it.
                    driver = RoundDriver(run, self.draft, self._draft_thread)
                    driver.start()
                reply = await open_session(stream, gen)
                gen.record("cloud", "prefill (server)", run.now() - reply.prefill_ms / 1000, run.now(), 0)
                opened()
                if gen.mode is Mode.CLOUD_SD:
                    await self._cloud_sd(stream, run)
                elif driver is None:
                    await self._cloud_ar(stream, run)
                else:
                    await driver.play(stream)
                # The text is complete: a Close lost with the link costs nothing.
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                    await stream.send(pb.ClientMessage(close=pb.Close()))
            finally:
                if driver is not None:
                    driver.stop()
                await stream.cancel()

    async def _fall_back(self, run: EdgeRun, outage: Outage, failure: BaseException, repeated: bool = False) -> bool:
        """Decode provisional tokens with the draft while probing the server. True once it
        answers (the next session re-verifies them); False when the text is complete and the
        outage budget is spent: then the provisional tokens are kept as output, flagged."""
        policy, gen = self.options.recovery, run.gen
        gen.stats.fallbacks += 1
        run.event("fallback: provisional edge-only")
        # Said once an outage; a server that answers probes but refuses again is the same outage.
        logger.log(
            logging.INFO if repeated else logging.WARNING,
            fallback_message(self.address, gen.produced, policy.probe_interval_s, failure),
        )
        probe = asyncio.ensure_future(
            wait_until_reachable(self._open_channel, policy.probe_interval_s, self.options.connect_timeout_s)
        )
        gen.fallback_started()
        try:
            assert self.draft is not None
            await decode_provisional(run, self.draft, self._draft_thread, until=probe.done)
            if not probe.done():
                # The provisional text is complete: wait for the server to verify it, within the budget.
                await asyncio.wait({probe}, timeout=max(0.0, outage.remaining_s()))
            if probe.done() and not probe.cancelled():
                if probe.exception() is not None:  # an unexpected probe failure: let a session try
                    logger.debug("probe failed: %s", describe(probe.exception()))  # type: ignore[arg-type]
                return True
        finally:
            gen.fallback_ended()
            probe.cancel()
            await asyncio.gather(probe, return_exceptions=True)
        logger.warning(
            "server %s did not come back within %.0f s: keeping %d provisional tokens (NOT the target's)",
            self.address,
            policy.outage_budget_s,
            len(gen.provisional),
        )
        reason = gen.provisional_end or "length"
        gen.settle_provisional(run.now())
        gen.finish(reason)
        return False

    # ------------------------------------------------------------------ modes without rounds

    async def _cloud_sd(self, stream: SessionStream, run: EdgeRun) -> None:
        """The server drafts and verifies (the co-located baseline): receive each round's tokens."""
        gen = run.gen
        receiver = ReceiveOnlyRounds(gen)
        while receiver.state is ReceiveState.RECEIVING:
            start = run.now()
            message = await stream.receive()
            gen.stats.wait_s += run.now() - start
            if message.WhichOneof("kind") != "tokens":
                raise ServerError(
                    "BAD_REPLY", f"expected tokens in a cloud-sd session, got {message.WhichOneof('kind')}"
                )
            tokens = message.tokens
            run.logprobs_arrived(tokens.logprobs, len(tokens.ids))
            if tokens.drafted:  # an empty finished message (a resumed, complete text) is no round
                # The server's own passes, as it reported them (placed back to back before this
                # reply, as a decode's is): its drafting is server time as much as its verify.
                verified_at = run.now() - tokens.compute_ms / 1000
                gen.record("cloud", "draft (server)", verified_at - tokens.draft_ms / 1000, verified_at)
                gen.record("cloud", "verify (server)", verified_at, run.now())
            receiver.cloud_round_decided(
                CloudRoundDecided(
                    tokens=list(tokens.ids),
                    finished=tokens.finished,
                    drafted=tokens.drafted,
                    accepted=tokens.accepted,
                    draft_s=tokens.draft_ms / 1000,
                    verify_s=tokens.compute_ms / 1000,
                    at=run.now(),
                )
            )

    async def _cloud_ar(self, stream: SessionStream, run: EdgeRun) -> None:
        """The server decodes: receive each pass's token."""
        gen = run.gen
        receiver = ReceiveOnlyRounds(gen)
        while receiver.state is ReceiveState.RECEIVING:
            start = run.now()
            message = await stream.receive()
            gen.stats.wait_s += run.now() - start
            tokens = message.tokens
            run.logprobs_arrived(tokens.logprobs, len(tokens.ids))
            gen.record(
                "cloud", "decode", run.now() - tokens.compute_ms / 1000, run.now()
            )  # the pass, as the server reported it
            compute_s = tokens.compute_ms / 1000
            receiver.tokens_decoded(
                TokensDecoded(tokens=list(tokens.ids), finished=tokens.finished, compute_s=compute_s, at=run.now())
            )
