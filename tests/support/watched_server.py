"""A verifier server that tests can watch and hold, so they wait on events instead of sleeping.

`WatchedService` is the real `VerifierService`; it only reads each stream's messages the moment
gRPC delivers them (the plain service reads the next message once the current round is done;
the order in which it handles them is unchanged) and records every draft block, so a test can
wait for "the tagged pre-draft for round 1 has reached the server".

`hold_first_verify` parks the target's forward for round 0 after its last layer (the exits have
spoken, the final verdict is not out yet) until such an event: a pipelined pre-draft then always
leaves before the final verdict, however fast or slow this machine is.
"""

from __future__ import annotations

import asyncio
import threading
from typing import AsyncIterator, Callable

import grpc
import torch

from edgespec.server.servicer import VerifierService
from edgespec.transport import edgespec_pb2 as pb

_END = object()


class WatchedService(VerifierService):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.blocks: list[pb.DraftBlock] = []  # every block received, in arrival order
        self._changed = threading.Condition()

    def wait_for_block(self, predicate: Callable[[pb.DraftBlock], bool], timeout_s: float, since: int = 0) -> bool:
        """True once a block received after the first ``since`` satisfies ``predicate``; False
        after ``timeout_s``."""
        with self._changed:
            return self._changed.wait_for(lambda: any(predicate(b) for b in self.blocks[since:]), timeout_s)

    def _record(self, message: pb.ClientMessage) -> None:
        if message.WhichOneof("kind") == "block":
            with self._changed:
                self.blocks.append(message.block)
                self._changed.notify_all()

    async def Session(
        self, request_iterator: AsyncIterator[pb.ClientMessage], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ServerMessage]:  # noqa: N802
        inbox: asyncio.Queue[object] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for message in request_iterator:
                    self._record(message)
                    inbox.put_nowait(message)
            finally:
                inbox.put_nowait(_END)

        async def messages() -> AsyncIterator[pb.ClientMessage]:
            while (message := await inbox.get()) is not _END:
                yield message  # type: ignore[misc]

        reader = asyncio.create_task(pump())
        try:
            async for reply in super().Session(messages(), context):
                yield reply
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


def is_tagged_for(round_index: int) -> Callable[[pb.DraftBlock], bool]:
    return lambda block: block.round == round_index and block.HasField("assumes")


class FirstVerifyHold:
    """Holds round 0's verify forward after the target's last layer until round 1's tagged
    pre-draft has reached ``service`` (at most ``timeout_s``); ``released_by_predraft`` says
    which ended the hold. Only the first verify after ``arm`` is held: arm it just before the
    generation, with no other session on the server."""

    def __init__(self, model: torch.nn.Module, timeout_s: float = 10.0) -> None:
        self.service: WatchedService | None = None
        self.timeout_s = timeout_s
        self.armed = False
        self.since = 0  # blocks received before arming belong to earlier sessions
        self.released_by_predraft: bool | None = None
        model.model.layers[-1].register_forward_hook(self._hook)

    def arm(self, service: WatchedService) -> None:
        self.service, self.armed, self.released_by_predraft = service, True, None
        self.since = len(service.blocks)

    def _hook(self, *_args: object) -> None:
        service = self.service
        # Block 0 reaches the server only after the prefill (the client sends it once the
        # session is open), so the first forward after it is round 0's verify.
        if not self.armed or service is None or not any(b.round == 0 for b in service.blocks[self.since :]):
            return
        self.armed = False
        self.released_by_predraft = service.wait_for_block(is_tagged_for(1), self.timeout_s, self.since)
