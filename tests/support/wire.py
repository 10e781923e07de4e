"""Drive the Session stream message by message, below the EdgeClient: for tests that send what a
well-behaved client never would, or interleave sessions round by round."""

from __future__ import annotations

import queue
from typing import Sequence

import grpc

from edgespec.transport import edgespec_pb2 as pb
from edgespec.transport import edgespec_pb2_grpc as pb_grpc
from edgespec.transport.codec import PROTOCOL_VERSION

_HALF_CLOSE = object()


class RawSession:
    """One Session stream on a sync channel; messages leave as they are sent."""

    def __init__(
        self, channel: grpc.Channel, metadata: Sequence[tuple[str, str]] | None = None, timeout_s: float = 60.0
    ) -> None:
        self._outbox: queue.Queue[object] = queue.Queue()
        self._replies = pb_grpc.VerifierStub(channel).Session(
            iter(self._outbox.get, _HALF_CLOSE), metadata=metadata, timeout=timeout_s
        )

    def send(self, message: pb.ClientMessage) -> None:
        self._outbox.put(message)

    def receive(self) -> pb.ServerMessage:
        return next(self._replies)

    def rest(self) -> list[pb.ServerMessage]:
        """Half-close, then every reply until the server ends the stream."""
        self._outbox.put(_HALF_CLOSE)
        return list(self._replies)

    def cancel(self) -> None:
        self._replies.cancel()


def open_message(prompt: Sequence[int], max_new_tokens: int, **fields: object) -> pb.ClientMessage:
    values: dict[str, object] = dict(
        protocol_version=PROTOCOL_VERSION, kind=pb.SPECULATIVE, prompt_ids=list(prompt), max_new_tokens=max_new_tokens
    )
    values.update(fields)
    return pb.ClientMessage(open=pb.Open(**values))  # type: ignore[arg-type]


def block_message(round_index: int, tokens: Sequence[int], **fields: object) -> pb.ClientMessage:
    return pb.ClientMessage(block=pb.DraftBlock(round=round_index, tokens=list(tokens), **fields))  # type: ignore[arg-type]


class GreedySession:
    """A greedy speculative session driven one round at a time with drafts the test chooses. Its
    tokens equal the target's greedy output whatever the drafts are, as long as no other stream can
    reach its state."""

    def __init__(self, channel: grpc.Channel, prompt: Sequence[int], max_new_tokens: int) -> None:
        self.stream = RawSession(channel)
        self.stream.send(open_message(prompt, max_new_tokens))
        reply = self.stream.receive()
        assert reply.WhichOneof("kind") == "opened", reply
        self.session_id = reply.opened.session_id
        self.max_new_tokens = max_new_tokens
        self.tokens: list[int] = []
        self.accepted: list[int] = []  # per round
        self.round = 0
        self.finished = False

    def step(self, draft: Sequence[int]) -> pb.FinalVerdict:
        self.stream.send(block_message(self.round, draft))
        reply = self.stream.receive()
        assert reply.WhichOneof("kind") == "final", reply
        verdict = reply.final
        committed = list(draft[: verdict.accepted]) + [verdict.next_token]
        self.tokens.extend(committed[: self.max_new_tokens - len(self.tokens)])
        self.accepted.append(verdict.accepted)
        self.round += 1
        self.finished = verdict.finished
        return verdict

    def close(self) -> list[pb.ServerMessage]:
        self.stream.send(pb.ClientMessage(close=pb.Close()))
        return self.stream.rest()


def drafts_from(
    reference: Sequence[int], produced: int, round_index: int, gamma: int = 2, vocab: int = 96
) -> list[int]:
    """Right drafts on even rounds, wrong ones on odd rounds: both accepting and rejecting verdicts."""
    right = list(reference[produced : produced + gamma]) or [0]
    return right if round_index % 2 == 0 else [(token + 1) % vocab for token in right]
