"""Checks on client messages that need no session state: run before anything is computed, and
before a pipelined block's assumption is judged, so a malformed block is refused, never dropped.

Order-dependent rules (which round comes next, whether the generation has ended) live with the
session (server/session.py).
"""

from __future__ import annotations

import math
from typing import AsyncIterator

from google.protobuf.message import DecodeError

from edgespec.transport import edgespec_pb2 as pb
from edgespec.transport.codec import ProtocolError, check_distribution


async def decoded(requests: AsyncIterator[pb.ClientMessage]) -> AsyncIterator[pb.ClientMessage]:
    """The stream's messages; bytes that are no ClientMessage are the client's error, not a bug."""
    iterator = requests.__aiter__()
    while True:
        try:
            message = await iterator.__anext__()
        except StopAsyncIteration:
            return
        except DecodeError as error:
            raise ProtocolError(pb.BAD_REQUEST, f"undecodable message: {error}") from None
        yield message


def check_open(request: pb.Open, max_new_tokens_limit: int) -> None:
    check_numbers(request.sampling)
    if request.max_new_tokens < 1:
        # Zero is no budget over a limit but a request that asks for nothing: BAD_REQUEST, so
        # neither a client nor its log calls it "too large".
        raise ProtocolError(
            pb.BAD_REQUEST,
            f"max_new_tokens must be at least 1 (a session generates at least one token), got {request.max_new_tokens}",
        )
    # committed_ids count against max_new_tokens; more of them than that is no resume but a second
    # prompt smuggled past the prompt limit, and would be prefilled before any other check.
    if not 0.0 <= request.draft_stop < 1.0:  # also refuses NaN
        raise ProtocolError(pb.BAD_REQUEST, f"draft_stop must be in [0, 1), got {request.draft_stop}")
    budget = min(int(request.max_new_tokens), max_new_tokens_limit)
    if len(request.committed_ids) > budget:
        raise ProtocolError(
            pb.TOO_LARGE,
            f"{len(request.committed_ids)} committed_ids exceed max_new_tokens ({budget}), which they count against",
        )


def check_numbers(sampling: pb.Sampling) -> None:
    """NaN and infinite sampling values are refused as what they are, before any range check
    would describe them as merely out of range."""
    for name in ("temperature", "top_p"):
        value = float(getattr(sampling, name))
        if math.isnan(value):
            raise ProtocolError(pb.BAD_REQUEST, f"sampling.{name} is not a number (NaN)")
        if math.isinf(value):
            raise ProtocolError(pb.BAD_REQUEST, f"sampling.{name} must be a finite number, got {value}")


# Candidate ids a block may name per draft token (the client sends 8).
MAX_CANDIDATES = 64


def check_candidates(block: pb.DraftBlock, vocab_size: int) -> None:
    """Candidate ids are optional; when sent, one non-empty row of in-vocabulary ids per token."""
    if not block.candidates:
        return
    if len(block.candidates) != len(block.tokens):
        raise ProtocolError(
            pb.BAD_REQUEST,
            f"candidate ids need one row per draft token: {len(block.tokens)} tokens, {len(block.candidates)} rows",
        )
    for index, row in enumerate(block.candidates):
        if not 1 <= len(row.ids) <= MAX_CANDIDATES:
            raise ProtocolError(
                pb.BAD_REQUEST, f"candidate row {index} must name 1..{MAX_CANDIDATES} ids, got {len(row.ids)}"
            )
        if max(row.ids) >= vocab_size:
            raise ProtocolError(
                pb.OUT_OF_VOCABULARY, f"candidate row {index} names a token outside the vocabulary (size {vocab_size})"
            )


def check_block(block: pb.DraftBlock, vocab_size: int, max_block: int, greedy: bool) -> None:
    size = len(block.tokens)
    if size == 0:
        raise ProtocolError(pb.BAD_REQUEST, "a block must hold at least one draft token")
    if size > max_block:
        raise ProtocolError(pb.TOO_LARGE, f"a block of {size} tokens exceeds this server's limit of {max_block}")
    if max(block.tokens) >= vocab_size:
        raise ProtocolError(pb.OUT_OF_VOCABULARY, f"a draft token is outside the vocabulary (size {vocab_size})")
    if greedy:
        if block.probs:
            raise ProtocolError(pb.BAD_REQUEST, "a greedy session's blocks carry no draft distributions")
        check_candidates(block, vocab_size)
        return
    if len(block.probs) != size:
        raise ProtocolError(
            pb.BAD_REQUEST,
            f"sampling needs one draft distribution per draft token: {size} tokens, {len(block.probs)} distributions",
        )
    for index, row in enumerate(block.probs):
        check_distribution(index, row, vocab_size)
