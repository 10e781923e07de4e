"""What a session hands the pass thread: a ``Job`` (one forward of the target, or other compute
that must run alone on the server's processor) and the ``JobResult`` it gets back, with the
arithmetic that turns a prefill job into the chunk a pass feeds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

import torch

from edgespec.models.kv import valid_prefix
from edgespec.models.target import ScoreRequest

T = TypeVar("T")


@dataclass
class Job(Generic[T]):
    """One session's forward: what to score, and what to do with the logits (on the compute
    thread, right after the forward). A ``prefill`` job may be fed in chunks over several passes;
    its ``finish`` gets the logits of the last chunk."""

    request: ScoreRequest | None
    finish: Callable[[torch.Tensor], T]
    prefill: bool = False
    # Compute on the server's processor that is not a target forward (cloud-sd's own draft): run
    # alone on this thread instead of ``request`` (so never beside a target forward), timed as one.
    run: Callable[[], T] | None = None

    @classmethod
    def standalone(cls, run: Callable[[], T]) -> "Job[T]":
        """A job that is not a target forward: ``run`` runs alone in a pass of its own."""
        return cls(None, finish=lambda logits: run(), run=run)


@dataclass(frozen=True)
class JobResult(Generic[T]):
    value: T
    forward_ms: float  # the (batched) forwards this job rode in, summed (a chunked prefill: several)
    queued_ms: float  # submitted -> its first forward started
    batch_size: int  # rows in its (last) forward
    passes: int = 1  # forwards it rode in
    waited_passes: int = 0  # forwards that started after it was submitted and before its first


def unfed_tokens(request: ScoreRequest) -> int:
    """Tokens a forward of ``request`` would feed: what its cache does not hold yet (``kv.sync``'s
    arithmetic; read on the compute thread, while the job's session waits for it)."""
    return len(request.sequence) - valid_prefix(request.kv.tokens, request.sequence, request.tail)


def prefill_chunk_request(request: ScoreRequest, tokens: int) -> tuple[ScoreRequest, bool]:
    """The next ``tokens`` of a prefill; True when this chunk completes it (then it is the
    request itself, whose logits the job's ``finish`` reads)."""
    cached = valid_prefix(request.kv.tokens, request.sequence, request.tail)
    end = cached + tokens
    if end >= len(request.sequence):
        return request, True
    return ScoreRequest(request.sequence[:end], 1, request.kv), False
