"""Protobuf in and out for the servicer: a draft block decoded into the round core's
``IncomingBlock``, and every reply the server sends built from plain values. The handlers and mode
loops decode a request, run the model, and encode the reply here, so no handler builds a message
field by field."""

from __future__ import annotations

from typing import Sequence

from edgespec.core.logprobs import TokenLogprob
from edgespec.core.verdict import Verdict
from edgespec.core.verifier import IncomingBlock, OutOfOrder, SendFinal
from edgespec.decoding.early import EarlyVerdictJudge
from edgespec.server.jobs import JobResult
from edgespec.server.refusals import Refused
from edgespec.transport import edgespec_pb2 as pb
from edgespec.transport.codec import (
    PROTOCOL_VERSION,
    ProtocolError,
    candidates_from_wire,
    distributions_from_wire,
    logprobs_to_wire,
    verdict_of,
)


def incoming_block(block: pb.DraftBlock, vocab_size: int, greedy: bool, with_candidates: bool) -> IncomingBlock:
    """The round core's view of a (checked) draft block: its tokens, the draft's distributions
    when sampling, the verdict a pipelined block assumes, and the candidate ids exits may score."""
    assumes = (block.assumes.round, verdict_of(block.assumes)) if block.HasField("assumes") else None
    probs = None if greedy else distributions_from_wire(block.probs, vocab_size)
    candidates = candidates_from_wire(block.candidates) if with_candidates and greedy else None
    return IncomingBlock(block.round, list(block.tokens), probs, assumes, candidates)


def out_of_order_error(error: OutOfOrder) -> ProtocolError:
    return ProtocolError(pb.OUT_OF_ORDER, str(error))


def opened_reply(
    session_id: str,
    prompt_ids: Sequence[int],
    eos_ids: frozenset[int],
    exit_layers: Sequence[int],
    num_layers: int,
    prefill_ms: float,
    target_name: str,
    grammar: bool = False,
) -> pb.ServerMessage:
    return pb.ServerMessage(
        opened=pb.Opened(
            session_id=session_id,
            protocol_version=PROTOCOL_VERSION,
            prompt_ids=list(prompt_ids),
            eos_ids=sorted(eos_ids),
            exit_layers=list(exit_layers),
            num_layers=num_layers,
            prefill_ms=prefill_ms,
            target=target_name,
            grammar=grammar,
        )
    )


def nothing_left_reply() -> pb.ServerMessage:
    """For a resumed session whose text was already complete (EOS or budget): no tokens, finished."""
    return pb.ServerMessage(tokens=pb.Tokens(ids=[], finished=True))


def decoded_token_reply(
    token: int, finished: bool, compute_ms: float, logprobs: Sequence[TokenLogprob] = ()
) -> pb.ServerMessage:
    """One cloud-ar token and the forward that chose it."""
    return pb.ServerMessage(
        tokens=pb.Tokens(
            ids=[token],
            finished=finished,
            compute_ms=compute_ms,
            logprobs=logprobs_to_wire(logprobs),
        )
    )


def committed_tokens_reply(
    committed: Sequence[int],
    finished: bool,
    compute_ms: float,
    draft_ms: float,
    drafted: int,
    accepted: int,
    logprobs: Sequence[TokenLogprob] = (),
) -> pb.ServerMessage:
    """What one cloud-sd round committed, with what its draft and verify cost."""
    return pb.ServerMessage(
        tokens=pb.Tokens(
            ids=committed,
            finished=finished,
            compute_ms=compute_ms,
            draft_ms=draft_ms,
            drafted=drafted,
            accepted=accepted,
            logprobs=logprobs_to_wire(logprobs),
        )
    )


def early_verdict_reply(
    round_index: int, layer: int, verdict: Verdict, confidence: float, elapsed_s: float
) -> pb.ServerMessage:
    return pb.ServerMessage(
        early=pb.EarlyVerdict(
            round=round_index,
            exit_layer=layer,
            accepted=verdict.accepted,
            next_token=verdict.next_token,
            confidence=confidence,
            elapsed_ms=elapsed_s * 1000,
        )
    )


def final_verdict_reply(
    final: SendFinal,
    verdict: Verdict,
    result: JobResult,
    judge: EarlyVerdictJudge | None,
    logprobs: Sequence[TokenLogprob] = (),
) -> pb.ServerMessage:
    """The verdict that commits a round, with its forward's timings, each exit's time, and the
    target's log-probabilities of the tokens it emits when the session asked for them."""
    exits = judge.verdicts if judge else []
    return pb.ServerMessage(
        final=pb.FinalVerdict(
            round=final.round,
            accepted=verdict.accepted,
            next_token=verdict.next_token,
            finished=final.finished,
            verify_ms=result.forward_ms,
            queued_ms=result.queued_ms,
            pipelined=final.pipelined,
            timings=[pb.SegmentTiming(name=f"exit {e.layer}", ms=e.elapsed_s * 1000) for e in exits],
            logprobs=logprobs_to_wire(logprobs),
        )
    )


def dropped_reply(round_index: int) -> pb.ServerMessage:
    return pb.ServerMessage(dropped=pb.Dropped(round=round_index))


def error_reply(error: ProtocolError | Refused) -> pb.ServerMessage:
    code = pb.ErrorCode.Value(error.code) if isinstance(error, Refused) else error.code
    return pb.ServerMessage(error=pb.Error(code=code, message=str(error)))


def error_code_name(error: ProtocolError | Refused) -> str:
    """The refusal's error code by name ("BUSY", "TOO_LARGE", ...), as metrics label it."""
    return error.code if isinstance(error, Refused) else pb.ErrorCode.Name(error.code)


def internal_error_reply(error: Exception) -> pb.ServerMessage:
    """A bug ended the session: the client hears that, never a hang."""
    return pb.ServerMessage(error=pb.Error(code=pb.INTERNAL, message=f"internal error: {error}"))


# Put on a session's reply queue: the stream ends after the replies queued before it.
END_OF_STREAM = object()
