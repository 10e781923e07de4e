"""The edge client: drafts on the device, verifies over gRPC, owns the committed text.

Drafting runs on a worker thread so the event loop keeps reading the stream while the draft
model computes: that is what lets a pre-draft start the moment an early verdict lands and a
pipelined pre-draft leave before the final verdict arrives.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import grpc

from edgespec.decoding.engine import DRAFT_SEED_OFFSET, GenerationConfig, GenerationResult
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
    connect_timeout_s: float = 30.0
    # No message from the server for this long means it is gone (a verify takes well under this).
    read_timeout_s: float = 120.0


class _Stream:
    """One session's bidirectional stream, with byte accounting and a read deadline."""

    def __init__(self, call: grpc.aio.StreamStreamCall, stats: GenerationStats, read_timeout_s: float) -> None:
        self.call = call
        self.stats = stats
        self.read_timeout_s = read_timeout_s
        self._reader: asyncio.Task | None = None

    async def send(self, message: pb.ClientMessage) -> None:
        self.stats.bytes_sent += wire_size(message)
        await self.call.write(message)

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
        return asyncio.run(self.agenerate(prompt_ids, mode, config, on_commit))

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
        stats = GenerationStats(mode=mode.value, prompt_tokens=len(prompt_ids))
        clock = Clock(stats)
        committed = [int(t) for t in prompt_ids]
        emit = on_commit or (lambda tokens: None)

        def commit(tokens: list[int]) -> None:
            if tokens and stats.new_tokens == 0:
                stats.ttft_s = clock.now()
            committed.extend(tokens)
            stats.new_tokens += len(tokens)
            emit(tokens)

        def partial() -> GenerationResult:
            stats.total_s = clock.now()
            return GenerationResult(tokens=committed[len(prompt_ids) :], stats=stats)

        if self.draft is not None:
            self.draft.reset()
        if mode is Mode.EDGE_ONLY:
            await self._edge_only(committed, config, stats, clock, commit)
            return partial()
        try:
            async with grpc.aio.insecure_channel(self.address) as channel:
                await asyncio.wait_for(channel.channel_ready(), self.options.connect_timeout_s)
                stream = _Stream(pb_grpc.VerifierStub(channel).Session(), stats, self.options.read_timeout_s)
                first_block = None
                try:
                    if mode is not Mode.CLOUD_AR:
                        # Draft the first block (the draft's own prefill included) while the server
                        # prefills the prompt, instead of after it.
                        first_block = asyncio.ensure_future(
                            self._draft(list(committed), min(config.gamma, config.max_new_tokens), config, stats, clock, 0)
                        )
                    opened = await self._open(stream, committed, mode, config, stats)
                    if first_block is None:
                        await self._cloud_ar(stream, stats, clock, commit)
                    else:
                        await self._speculative(stream, opened, first_block, committed, mode, config, stats, clock, commit)
                    await stream.send(pb.ClientMessage(close=pb.Close()))
                finally:
                    stream.cancel()
                    if first_block is not None and not first_block.done():
                        first_block.cancel()
        except ServerError as error:
            error.partial = partial()
            raise
        except (grpc.aio.AioRpcError, ConnectionError, asyncio.TimeoutError, asyncio.InvalidStateError) as error:
            # InvalidStateError: a write on a call the server already ended.
            detail = error.details() if isinstance(error, grpc.aio.AioRpcError) else str(error) or type(error).__name__
            result = partial()
            raise ConnectionLost(
                f"lost the server at {self.address} after {result.stats.new_tokens} committed tokens: {detail}", result
            ) from error
        return partial()

    # ------------------------------------------------------------------ modes

    async def _open(
        self, stream: _Stream, committed: list[int], mode: Mode, config: GenerationConfig, stats: GenerationStats
    ) -> pb.Opened:
        await stream.send(
            pb.ClientMessage(
                open=pb.Open(
                    protocol_version=PROTOCOL_VERSION,
                    kind=pb.CLOUD_AR if mode is Mode.CLOUD_AR else pb.SPECULATIVE,
                    prompt_ids=committed,
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
        return message.opened

    async def _cloud_ar(self, stream: _Stream, stats: GenerationStats, clock: Clock, commit: Callable[[list[int]], None]) -> None:
        while True:
            start = clock.now()
            message = await stream.receive()
            stats.wait_s += clock.now() - start
            tokens = message.tokens
            stats.rounds += 1
            stats.target_passes += 1
            stats.server_verify_s += tokens.compute_ms / 1000
            commit(list(tokens.ids))
            if tokens.finished:
                stats.finish_reason = "done"
                return

    async def _edge_only(
        self, committed: list[int], config: GenerationConfig, stats: GenerationStats, clock: Clock, commit: Callable[[list[int]], None]
    ) -> None:
        assert self.draft is not None
        produced = 0
        while True:
            start = clock.now()
            logits = await self._in_draft_thread(self.draft.next_token_logits, list(committed))
            uniform = None if config.sampling.greedy else position_uniform(config.seed + DRAFT_SEED_OFFSET, len(committed))
            token = choose_token(logits, config.sampling, uniform)
            stats.draft_s += clock.now() - start
            stats.rounds += 1
            step = clip_to_stop([token], config.eos_ids, config.max_new_tokens - produced)
            produced += len(step.tokens)
            commit(step.tokens)
            if step.finished:
                return

    async def _speculative(
        self,
        stream: _Stream,
        opened: pb.Opened,
        first_block: asyncio.Future,
        committed: list[int],
        mode: Mode,
        config: GenerationConfig,
        stats: GenerationStats,
        clock: Clock,
        commit: Callable[[list[int]], None],
    ) -> None:
        predraft = mode in (Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED)
        pipelined = mode is Mode.SD_EE_PIPELINED
        eos = frozenset(opened.eos_ids)
        prompt_len = len(committed)

        def budget(extra: int = 0) -> int:
            return config.max_new_tokens - (len(committed) - prompt_len) - extra

        round_index = 0
        block = await first_block
        await self._send_block(stream, round_index, block)
        while True:
            sent_at = clock.now()
            hint: Verdict | None = None  # the early verdict being acted on (pre-draft modes)
            latest: Verdict | None = None  # the last streamed early verdict, acted on or not
            pre: asyncio.Future | None = None
            pre_stop: threading.Event | None = None
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
                        pre, pre_stop = self._start_predraft(committed, block, hint, eos, budget, config, stats, clock, round_index)
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
            stats.pipelined += int(final.pipelined)
            step = clip_to_stop(verdict.committed(block.tokens), eos, budget())
            commit(step.tokens)
            # sd-ee scores the would-be pre-draft: the hint it would have acted on.
            scored = hint if predraft else latest
            if scored is None:
                stats.no_hint += int(mode.uses_exits)
            elif scored == verdict:
                stats.hits += 1
            else:
                stats.misses += 1
            if step.finished or final.finished:
                stats.finish_reason = step.reason or "length"  # the server may end it (its budget)
                if pre_stop is not None:
                    pre_stop.set()
                return
            round_index += 1
            if pre is not None and hint == verdict:
                block = await pre
                if tagged_hint != verdict:  # not already on its way to the server
                    await self._send_block(stream, round_index, block)
            else:
                if pre_stop is not None:
                    pre_stop.set()
                block = await self._draft(committed, min(config.gamma, budget()), config, stats, clock, round_index)
                await self._send_block(stream, round_index, block)

    # ------------------------------------------------------------------ drafting

    def _start_predraft(
        self,
        committed: list[int],
        block: DraftBlock,
        hint: Verdict,
        eos: frozenset[int],
        budget: Callable[[int], int],
        config: GenerationConfig,
        stats: GenerationStats,
        clock: Clock,
        round_index: int,
    ) -> tuple[asyncio.Future | None, threading.Event | None]:
        assumed = clip_to_stop(hint.committed(block.tokens), eos, budget(0))
        if assumed.finished:
            return None, None  # the assumed verdict ends the generation: nothing to pre-draft
        stop = threading.Event()
        gamma = min(config.gamma, budget(len(assumed.tokens)))
        task = asyncio.ensure_future(
            self._draft(committed + assumed.tokens, gamma, config, stats, clock, round_index + 1, stop, what="pre-draft")
        )
        return task, stop

    async def _draft(
        self,
        sequence: list[int],
        gamma: int,
        config: GenerationConfig,
        stats: GenerationStats,
        clock: Clock,
        round_index: int,
        stop: threading.Event | None = None,
        what: str = "draft",
    ) -> DraftBlock:
        assert self.draft is not None
        draft = self.draft

        def run() -> tuple[DraftBlock, float, float]:
            start = clock.now()
            result = draft.draft(
                sequence, gamma, config.sampling, seed=config.seed + DRAFT_SEED_OFFSET, should_stop=stop.is_set if stop else None
            )
            return result, start, clock.now()

        block, start, end = await self._in_draft_thread(run)
        stats.draft_s += end - start
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
