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
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import grpc

from edgespec.client.channel import open_channel
from edgespec.client.recovery import (
    TRANSIENT_SERVER_CODES,
    Outage,
    RecoveryPolicy,
    describe,
    is_transient,
    wait_connected,
    wait_until_reachable,
)
from edgespec.decoding.config import DRAFT_SEED_OFFSET, GenerationConfig, GenerationResult
from edgespec.decoding.modes import Mode
from edgespec.decoding.sampling import choose_token, position_uniform
from edgespec.decoding.stats import Clock, GenerationStats
from edgespec.decoding.stopping import clip_to_stop
from edgespec.decoding.verification import Verdict
from edgespec.models.draft import DraftBlock, DraftRuntime
from edgespec.transport import edgespec_pb2 as pb
from edgespec.transport import edgespec_pb2_grpc as pb_grpc
from edgespec.transport.codec import (
    PROTOCOL_VERSION,
    distributions_to_wire,
    sampling_to_wire,
    verdict_of,
    wire_size,
)
from edgespec.transport.security import INSECURE, ClientSecurity

logger = logging.getLogger(__name__)


class ServerError(RuntimeError):
    """The server refused a request; ``code`` is the protocol's error code name."""

    def __init__(self, code: str, message: str, partial: GenerationResult | None = None) -> None:
        super().__init__(f"server error {code}: {message}")
        self.code = code
        self.partial = partial


class ConnectionLost(RuntimeError):
    """The server or the link went away mid-generation. ``partial`` holds every token committed
    before that, so nothing generated is lost."""

    def __init__(self, message: str, partial: GenerationResult) -> None:
        super().__init__(message)
        self.partial = partial


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


_SYNC_LOOP: asyncio.AbstractEventLoop | None = None
_SYNC_LOOP_LOCK = threading.Lock()


def _sync_loop() -> asyncio.AbstractEventLoop:
    """One event loop, on a daemon thread, for every synchronous call in this process.

    grpc.aio's completion-queue poller stays bound to each loop it has served; a loop per call
    (asyncio.run) leaves it posting to closed loops ("Event loop is closed" tracebacks)."""
    global _SYNC_LOOP
    with _SYNC_LOOP_LOCK:
        if _SYNC_LOOP is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, daemon=True, name="edgespec-client").start()
            _SYNC_LOOP = loop
        return _SYNC_LOOP


class _Generation:
    """One generation's state on the client: the committed text, and the accounting that every
    session of it (the first, and each one re-opened after an outage) adds to."""

    def __init__(
        self, prompt_ids: Sequence[int], mode: Mode, config: GenerationConfig, on_commit: Callable[[list[int]], None] | None
    ) -> None:
        self.mode = mode
        self.config = config
        self.prompt_len = len(prompt_ids)
        self.committed = [int(t) for t in prompt_ids]
        self.stats = GenerationStats(mode=mode.value, prompt_tokens=len(prompt_ids))
        self.clock = Clock(self.stats)
        # The server's EOS set replaces this once a session opens; until then (and for the
        # edge-only mode) the caller's decides.
        self.eos = config.eos_ids
        self.finished = False
        self.falling_back = False  # tokens are being decided by the draft alone
        self._emit = on_commit or (lambda tokens: None)
        self.gamma_policy = config.gamma_policy()
        self.draft_s: dict[int, float] = {}  # round -> seconds its block took to draft

    def gamma(self, extra: int = 0) -> int:
        """The next block's length: the policy's choice (or the fixed γ), within the budget."""
        chosen = self.gamma_policy.next_gamma() if self.gamma_policy else self.config.gamma
        return min(chosen, self.budget(extra))

    @property
    def produced(self) -> int:
        return len(self.committed) - self.prompt_len

    def budget(self, extra: int = 0) -> int:
        return self.config.max_new_tokens - self.produced - extra

    def commit(self, tokens: list[int]) -> None:
        if tokens and self.stats.new_tokens == 0:
            self.stats.ttft_s = self.clock.now()
        if self.falling_back and tokens:
            start, _ = self.stats.fallback_spans[-1]
            self.stats.fallback_spans[-1] = (start, self.produced + len(tokens))
            self.stats.fallback_tokens += len(tokens)
        self.committed.extend(tokens)
        self.stats.new_tokens += len(tokens)
        self._emit(tokens)

    def finish(self, reason: str) -> None:
        self.finished = True
        self.stats.finish_reason = reason

    def event(self, what: str) -> None:
        at = self.clock.now()
        self.clock.record("link", what, at, at, self.stats.rounds)

    def result(self) -> GenerationResult:
        self.stats.total_s = self.clock.now()
        return GenerationResult(tokens=self.committed[self.prompt_len :], stats=self.stats)


class _Stream:
    """One session's bidirectional stream, with byte accounting and a read deadline."""

    def __init__(self, call: grpc.aio.StreamStreamCall, stats: GenerationStats, read_timeout_s: float) -> None:
        self.call = call
        self.stats = stats
        self.read_timeout_s = read_timeout_s
        self._reader: asyncio.Task | None = None

    async def send(self, message: pb.ClientMessage) -> None:
        self.stats.bytes_sent += wire_size(message)
        try:
            await self.call.write(message)
        except asyncio.InvalidStateError:
            # The server ended the call first: raise its status (e.g. UNAUTHENTICATED), which says why.
            code = await self.call.code()
            if code is grpc.StatusCode.OK:
                raise
            raise grpc.aio.AioRpcError(code, await self.call.initial_metadata(), await self.call.trailing_metadata(), await self.call.details()) from None

    def next_message(self) -> asyncio.Task:
        """The pending read as a task, so it can be awaited alongside a running draft."""
        if self._reader is None:
            self._reader = asyncio.ensure_future(asyncio.wait_for(self.call.read(), self.read_timeout_s))
        return self._reader

    async def receive(self) -> pb.ServerMessage:
        task = self.next_message()
        try:
            message = await task
        finally:
            self._reader = None
        if message is grpc.aio.EOF:
            raise ConnectionError("the server closed the stream")
        self.stats.bytes_received += wire_size(message)
        if message.WhichOneof("kind") == "error":
            raise ServerError(pb.ErrorCode.Name(message.error.code), message.error.message)
        return message

    def cancel(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        self.call.cancel()


class EdgeClient:
    def __init__(self, address: str, draft: DraftRuntime | None = None, options: ClientOptions = ClientOptions()) -> None:
        self.address = address
        self.draft = draft
        self.options = options
        self._draft_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="draft")

    # ------------------------------------------------------------------ public API

    def generate(
        self,
        prompt_ids: Sequence[int],
        mode: Mode,
        config: GenerationConfig,
        on_commit: Callable[[list[int]], None] | None = None,
    ) -> GenerationResult:
        return asyncio.run_coroutine_threadsafe(self.agenerate(prompt_ids, mode, config, on_commit), _sync_loop()).result()

    def stream(self, prompt_ids: Sequence[int], mode: Mode, config: GenerationConfig) -> Iterator[list[int]]:
        """Yield each round's committed tokens as they are decided; raises what generate raises."""
        chunks: queue.Queue[object] = queue.Queue()
        done = object()

        def run() -> None:
            try:
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
    ) -> GenerationResult:
        if not prompt_ids:
            raise ValueError("the prompt must contain at least one token")
        if mode.uses_draft and self.draft is None:
            raise ValueError(f"mode {mode.value} needs a draft model on the edge")
        gen = _Generation(prompt_ids, mode, config, on_commit)
        if self.draft is not None:
            self.draft.reset()
        if mode is Mode.EDGE_ONLY:
            await self._edge_only(gen)
            return gen.result()
        try:
            await self._with_recovery(gen)
        except ServerError as error:
            error.partial = gen.result()
            raise
        return gen.result()

    # ------------------------------------------------------------------ sessions and outages

    def _open_channel(self) -> grpc.aio.Channel:
        return open_channel(self.address, self.options.security, self._channel_options())

    def _channel_options(self) -> list[tuple[str, int]]:
        timeout_ms = int(self.options.keepalive_timeout_s * 1000)
        return [
            ("grpc.keepalive_time_ms", int(self.options.keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", timeout_ms),
            # A keepalive ping can ride on a ping already in flight, which then times out after
            # this (60 s by default), not after keepalive_timeout: measured, a silent link went
            # unnoticed until the read deadline without it.
            ("grpc.http2.ping_timeout_ms", timeout_ms),
            # Keep pinging through a long verify, when no data flows either way.
            ("grpc.http2.max_pings_without_data", 0),
            # gRPC shares connections between channels to the same address; a reconnect must not
            # be handed the dead connection it is fleeing.
            ("grpc.use_local_subchannel_pool", 1),
        ]

    async def _with_recovery(self, gen: _Generation) -> None:
        """Run sessions until the generation finishes, re-opening after each outage with the
        tokens committed so far; past the policy's budget, decode edge-only until the server
        answers again (or raise ConnectionLost when fallback is off)."""
        policy = self.options.recovery
        outage: Outage | None = None
        returning = False  # the next session ends a fallback

        def opened() -> None:
            nonlocal outage, returning
            if outage is not None:
                gen.stats.reconnects += 1
                gen.event("reconnected")
                logger.info("re-opened the session after %d committed tokens", gen.produced)
                outage = None
            if returning:
                gen.stats.switchbacks += 1
                gen.event(f"back to {gen.mode.value}")
                logger.warning("the server is back: %s again after %d tokens", gen.mode.value, gen.produced)
                returning = False

        while not gen.finished:
            try:
                await self._session(gen, opened)
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
                outage = Outage(policy)
                gen.stats.connection_losses += 1
                gen.event("connection lost")
                logger.warning("lost the server at %s after %d committed tokens: %s", self.address, gen.produced, describe(failure))
            delay = outage.next_delay()
            if delay is not None:
                logger.info("reconnect attempt %d in %.2f s", outage.attempts, delay)
                await asyncio.sleep(delay)
                continue
            if not policy.fallback or self.draft is None:
                raise self._lost(gen, failure, outage.attempts) from failure
            await self._fall_back(gen)
            # The server answered a probe (or the text is complete): a fresh round of retries if
            # the re-open fails after all.
            outage, returning = Outage(policy), True

    def _lost(self, gen: _Generation, error: BaseException, attempts: int = 0) -> ConnectionLost:
        tried = f" ({attempts} reconnect attempts)" if attempts else ""
        return ConnectionLost(
            f"lost the server at {self.address} after {gen.produced} committed tokens{tried}: {describe(error)}", gen.result()
        )

    async def _session(self, gen: _Generation, opened: Callable[[], None]) -> None:
        """One session with the server, from Open (with the committed tokens) to the end of
        the generation. A round whose verdict never arrived committed nothing, so a failure here
        loses no text: the next session simply redoes that round."""
        async with self._open_channel() as channel:
            await wait_connected(channel, self.options.connect_timeout_s)
            stream = _Stream(pb_grpc.VerifierStub(channel).Session(), gen.stats, self.options.read_timeout_s)
            first_block = None
            try:
                if gen.mode is not Mode.CLOUD_AR:
                    # Draft the first block (the draft's own prefill included) while the server
                    # prefills the prompt, instead of after it.
                    first_block = asyncio.ensure_future(self._draft(list(gen.committed), gen.gamma(), gen, 0))
                reply = await self._open(stream, gen)
                opened()
                if first_block is None:
                    await self._cloud_ar(stream, gen)
                else:
                    await self._speculative(stream, reply, first_block, gen)
                # The text is complete: a Close lost with the link costs nothing.
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                    await stream.send(pb.ClientMessage(close=pb.Close()))
            finally:
                stream.cancel()
                if first_block is not None and not first_block.done():
                    first_block.cancel()

    async def _fall_back(self, gen: _Generation) -> None:
        """Decode edge-only while probing the server; return when it answers or the text is done."""
        policy = self.options.recovery
        gen.stats.fallbacks += 1
        gen.stats.fallback_spans.append((gen.produced, gen.produced))
        gen.event("fallback: edge-only")
        logger.warning(
            "server %s unreachable: continuing edge-only (NOT lossless) after %d tokens, probing every %.1f s",
            self.address, gen.produced, policy.probe_interval_s,
        )
        probe = asyncio.ensure_future(
            wait_until_reachable(self._open_channel, policy.probe_interval_s, self.options.connect_timeout_s)
        )
        gen.falling_back = True
        try:
            await self._edge_only(gen, until=probe.done)
        finally:
            gen.falling_back = False
            probe.cancel()
            await asyncio.gather(probe, return_exceptions=True)

    # ------------------------------------------------------------------ modes

    async def _open(self, stream: _Stream, gen: _Generation) -> pb.Opened:
        mode, config = gen.mode, gen.config
        await stream.send(
            pb.ClientMessage(
                open=pb.Open(
                    protocol_version=PROTOCOL_VERSION,
                    kind=pb.CLOUD_AR if mode is Mode.CLOUD_AR else pb.SPECULATIVE,
                    prompt_ids=gen.committed[: gen.prompt_len],
                    # A resumed session: the server counts these against max_new_tokens.
                    committed_ids=gen.committed[gen.prompt_len :],
                    sampling=sampling_to_wire(config.sampling),
                    seed=config.seed,
                    max_new_tokens=config.max_new_tokens,
                    early_verdicts=mode.uses_exits,
                )
            )
        )
        message = await stream.receive()
        if message.WhichOneof("kind") != "opened":
            raise ServerError("BAD_REPLY", f"expected opened, got {message.WhichOneof('kind')}")
        if mode.uses_exits and not message.opened.exit_layers:
            raise ServerError("NO_EXITS", f"mode {mode.value} needs a server with exits; this one has none")
        gen.eos = frozenset(message.opened.eos_ids)
        return message.opened

    async def _cloud_ar(self, stream: _Stream, gen: _Generation) -> None:
        stats, clock = gen.stats, gen.clock
        while True:
            start = clock.now()
            message = await stream.receive()
            stats.wait_s += clock.now() - start
            tokens = message.tokens
            stats.rounds += 1
            stats.target_passes += 1
            stats.server_verify_s += tokens.compute_ms / 1000
            gen.commit(list(tokens.ids))
            if tokens.finished:
                gen.finish("done")
                return

    async def _edge_only(self, gen: _Generation, until: Callable[[], bool] = lambda: False) -> None:
        """The draft alone decides, one token at a time, until the text is done or ``until()``;
        always at least one token, so every fallback makes progress."""
        assert self.draft is not None
        config, stats, clock = gen.config, gen.stats, gen.clock
        while True:
            start = clock.now()
            logits = await self._in_draft_thread(self.draft.next_token_logits, list(gen.committed))
            uniform = None if config.sampling.greedy else position_uniform(config.seed + DRAFT_SEED_OFFSET, len(gen.committed))
            token = choose_token(logits, config.sampling, uniform)
            end = clock.now()
            stats.draft_s += end - start
            clock.record("edge", "fallback decode" if gen.falling_back else "decode", start, end, stats.rounds)
            stats.rounds += 1
            step = clip_to_stop([token], gen.eos, gen.budget())
            gen.commit(step.tokens)
            if step.finished:
                gen.finish(step.reason)
                return
            if until():
                return

    async def _speculative(self, stream: _Stream, opened: pb.Opened, first_block: asyncio.Future, gen: _Generation) -> None:
        mode, config, stats, clock = gen.mode, gen.config, gen.stats, gen.clock
        predraft = mode in (Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED)
        pipelined = mode is Mode.SD_EE_PIPELINED
        eos = frozenset(opened.eos_ids)
        committed = gen.committed
        pre: asyncio.Future | None = None
        pre_stop: threading.Event | None = None
        round_index = 0  # every session numbers its rounds from 0
        try:
            block = await first_block
            await self._send_block(stream, round_index, block)
            while True:
                sent_at = clock.now()
                hint: Verdict | None = None  # the early verdict being acted on (pre-draft modes)
                latest: Verdict | None = None  # the last streamed early verdict, acted on or not
                pre, pre_stop = None, None
                tagged_hint: Verdict | None = None
                while True:
                    if pipelined and pre is not None and pre.done() and tagged_hint is None and hint is not None:
                        tagged_hint = hint
                        await self._send_block(stream, round_index + 1, pre.result(), assumes=(round_index, hint))
                    reader = stream.next_message()
                    waiting = {reader}
                    if pipelined and pre is not None and not pre.done() and tagged_hint is None:
                        waiting.add(pre)
                    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                    if not reader.done():
                        continue
                    message = await stream.receive()
                    kind = message.WhichOneof("kind")
                    if kind == "dropped":
                        stats.dropped += 1
                    elif kind == "early" and message.early.round == round_index:
                        early = verdict_of(message.early)
                        latest = early
                        at = clock.now()
                        clock.record("link", f"early@{message.early.exit_layer}", at, at, round_index)
                        if predraft and early != hint and tagged_hint is None:
                            hint = early
                            if pre_stop is not None:
                                pre_stop.set()  # the older pre-draft's premise was just replaced
                            pre, pre_stop = self._start_predraft(gen, block, hint, eos, round_index)
                    elif kind == "final" and message.final.round == round_index:
                        break
                    else:
                        raise ServerError("BAD_REPLY", f"unexpected {kind} message in round {round_index}")

                final = message.final
                verdict = verdict_of(final)
                stats.wait_s += clock.now() - sent_at
                stats.server_verify_s += final.verify_ms / 1000
                clock.record("cloud", "verify (server)", clock.now() - final.verify_ms / 1000, clock.now(), round_index)
                stats.rounds += 1
                stats.target_passes += 1
                stats.drafted += len(block.tokens)
                stats.accepted += verdict.accepted
                stats.count_gamma(len(block.tokens))
                if gen.gamma_policy is not None:
                    # A pre-drafted block's draft time was hidden behind the last verify; charging
                    # it anyway keeps the model simple and errs towards shorter blocks.
                    draft_s = gen.draft_s.get(round_index, 0.0)
                    wait_s = clock.now() - sent_at
                    gen.gamma_policy.observe(len(block.tokens), verdict.accepted, draft_s, final.verify_ms / 1000, draft_s + wait_s)
                stats.pipelined += int(final.pipelined)
                step = clip_to_stop(verdict.committed(block.tokens), eos, gen.budget())
                gen.commit(step.tokens)
                # sd-ee scores the would-be pre-draft: the hint it would have acted on.
                scored = hint if predraft else latest
                if scored is None:
                    stats.no_hint += int(mode.uses_exits)
                elif scored == verdict:
                    stats.hits += 1
                else:
                    stats.misses += 1
                if step.finished or final.finished:
                    gen.finish(step.reason or "length")  # the server may end it (its budget)
                    return
                round_index += 1
                if pre is not None and hint == verdict:
                    block = await pre
                    pre, pre_stop = None, None
                    if tagged_hint != verdict:  # not already on its way to the server
                        await self._send_block(stream, round_index, block)
                else:
                    if pre_stop is not None:
                        pre_stop.set()
                    block = await self._draft(committed, gen.gamma(), gen, round_index)
                    await self._send_block(stream, round_index, block)
        finally:
            # A pre-draft built on a verdict this session will never deliver (or no longer
            # needs) is dropped: the draft thread stops it at its next step.
            if pre_stop is not None:
                pre_stop.set()
            if pre is not None and not pre.done():
                pre.cancel()

    # ------------------------------------------------------------------ drafting

    def _start_predraft(
        self, gen: _Generation, block: DraftBlock, hint: Verdict, eos: frozenset[int], round_index: int
    ) -> tuple[asyncio.Future | None, threading.Event | None]:
        assumed = clip_to_stop(hint.committed(block.tokens), eos, gen.budget())
        if assumed.finished:
            return None, None  # the assumed verdict ends the generation: nothing to pre-draft
        stop = threading.Event()
        gamma = gen.gamma(len(assumed.tokens))
        task = asyncio.ensure_future(
            self._draft(gen.committed + assumed.tokens, gamma, gen, round_index + 1, stop, what="pre-draft")
        )
        return task, stop

    async def _draft(
        self,
        sequence: list[int],
        gamma: int,
        gen: _Generation,
        round_index: int,
        stop: threading.Event | None = None,
        what: str = "draft",
    ) -> DraftBlock:
        assert self.draft is not None
        draft, config, stats, clock = self.draft, gen.config, gen.stats, gen.clock

        def run() -> tuple[DraftBlock, float, float]:
            start = clock.now()
            result = draft.draft(
                sequence, gamma, config.sampling, seed=config.seed + DRAFT_SEED_OFFSET, should_stop=stop.is_set if stop else None
            )
            return result, start, clock.now()

        block, start, end = await self._in_draft_thread(run)
        stats.draft_s += end - start
        gen.draft_s[round_index] = end - start
        clock.record("edge", what, start, end, round_index)
        return block

    async def _in_draft_thread(self, function: Callable[..., object], *args: object):  # type: ignore[no-untyped-def]
        return await asyncio.get_running_loop().run_in_executor(self._draft_thread, function, *args)

    @staticmethod
    async def _send_block(
        stream: _Stream, round_index: int, block: DraftBlock, assumes: tuple[int, Verdict] | None = None
    ) -> None:
        message = pb.DraftBlock(round=round_index, tokens=block.tokens, probs=distributions_to_wire(block.probs))
        if assumes is not None:
            assumed_round, verdict = assumes
            message.assumes.CopyFrom(pb.Assumption(round=assumed_round, accepted=verdict.accepted, next_token=verdict.next_token))
        await stream.send(pb.ClientMessage(block=message))
