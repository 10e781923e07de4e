"""One session's bidirectional gRPC stream on the client, with byte accounting, a read
deadline, and the protocol's errors raised as exceptions."""

from __future__ import annotations

import asyncio

import grpc

from edgespec.core.config import GenerationResult
from edgespec.core.generation import Generation
from edgespec.core.modes import Mode
from edgespec.core.stats import GenerationStats
from edgespec.transport import edgespec_pb2 as pb
from edgespec.transport.codec import PROTOCOL_VERSION, grammar_to_wire, sampling_to_wire, wire_size


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


class SessionStream:
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
            raise grpc.aio.AioRpcError(
                code, await self.call.initial_metadata(), await self.call.trailing_metadata(), await self.call.details()
            ) from None

    def next_message(self) -> asyncio.Task:
        """The pending read as a task, so it can be awaited alongside running drafts."""
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

    async def cancel(self) -> None:
        """End the call and the pending read, and wait for the read to be gone (a task left
        pending at exit prints 'Task was destroyed but it is pending')."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
        self.call.cancel()
        if reader is not None:
            await asyncio.gather(reader, return_exceptions=True)


_KINDS = {Mode.CLOUD_AR: pb.CLOUD_AR, Mode.CLOUD_SD: pb.CLOUD_SD}


async def open_session(stream: SessionStream, gen: Generation) -> pb.Opened:
    """Open (or re-open, with every token committed so far) the generation's session."""
    mode, config = gen.mode, gen.config
    await stream.send(
        pb.ClientMessage(
            open=pb.Open(
                protocol_version=PROTOCOL_VERSION,
                kind=_KINDS.get(mode, pb.SPECULATIVE),
                prompt_ids=gen.committed[: gen.prompt_len],
                # A resumed session: the server counts these against max_new_tokens.
                committed_ids=gen.new_tokens,
                sampling=sampling_to_wire(config.sampling),
                seed=config.seed,
                max_new_tokens=config.max_new_tokens,
                early_verdicts=config.wants_early_verdicts(mode),
                # cloud-sd: the server drafts, with these block lengths.
                gamma=config.gamma,
                adaptive_gamma=config.adaptive_gamma,
                max_gamma=config.max_gamma,
                draft_stop=config.draft_stop_below(),
                logprobs=config.logprobs is not None,
                top_logprobs=config.logprobs or 0,
                grammar=grammar_to_wire(config.grammar) if config.grammar is not None else None,
            )
        )
    )
    message = await stream.receive()
    if message.WhichOneof("kind") != "opened":
        raise ServerError("BAD_REPLY", f"expected opened, got {message.WhichOneof('kind')}")
    if config.grammar is not None and not message.opened.grammar:
        # An old server ignored the grammar: nothing it generates may be taken as constrained.
        raise ServerError("NO_GRAMMAR", "the verifier does not apply grammars: it predates them (upgrade it)")
    if config.needs_exits(mode) and not message.opened.exit_layers:
        raise ServerError("NO_EXITS", f"mode {mode.value} needs a server with exits; this one has none")
    gen.session_opened(message.opened.eos_ids)
    return message.opened
