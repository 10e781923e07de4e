"""The servicer's protobuf in and out (``server/encoding.py``): a block decoded for the round
core, and each reply carrying exactly the values it was built from."""

from __future__ import annotations

from types import SimpleNamespace

from edgespec.server.encoding import (
    committed_tokens_reply,
    decoded_token_reply,
    dropped_reply,
    early_verdict_reply,
    error_reply,
    final_verdict_reply,
    incoming_block,
    internal_error_reply,
    nothing_left_reply,
    opened_reply,
)
from edgespec.server.jobs import JobResult
from edgespec.server.refusals import Refused
from edgespec.transport import edgespec_pb2 as pb
from edgespec.transport.codec import PROTOCOL_VERSION, ProtocolError


def test_a_greedy_block_keeps_its_tokens_and_candidates_and_its_assumed_verdict() -> None:
    block = pb.DraftBlock(
        round=3,
        tokens=[4, 5],
        assumes=pb.Assumption(round=2, accepted=1, next_token=9),
        candidates=[pb.CandidateIds(ids=[4, 6]), pb.CandidateIds(ids=[5, 7])],
    )
    incoming = incoming_block(block, vocab_size=16, greedy=True, with_candidates=True)
    assert incoming.round == 3 and incoming.tokens == [4, 5] and incoming.payload is None
    assumed_round, verdict = incoming.assumes
    assert assumed_round == 2 and (verdict.accepted, verdict.next_token) == (1, 9)
    assert incoming.candidates.tolist() == [[4, 6], [5, 7]]


def test_candidates_are_dropped_when_exits_score_the_whole_vocabulary() -> None:
    block = pb.DraftBlock(round=0, tokens=[4], candidates=[pb.CandidateIds(ids=[4, 6])])
    incoming = incoming_block(block, vocab_size=16, greedy=True, with_candidates=False)
    assert incoming.candidates is None and incoming.assumes is None


def test_a_sampled_block_carries_the_drafts_distributions() -> None:
    block = pb.DraftBlock(round=0, tokens=[2], probs=[pb.SparseDistribution(ids=[2, 3], probs=[0.75, 0.25])])
    incoming = incoming_block(block, vocab_size=4, greedy=False, with_candidates=True)
    assert incoming.payload.tolist() == [[0.0, 0.0, 0.75, 0.25]] and incoming.candidates is None


def test_opened_carries_the_servers_version_and_the_sessions_facts() -> None:
    opened = opened_reply("s1", [1, 2], frozenset({7, 3}), [14], 28, 12.5, "target").opened
    assert opened.protocol_version == PROTOCOL_VERSION and opened.session_id == "s1"
    assert list(opened.prompt_ids) == [1, 2] and list(opened.eos_ids) == [3, 7]
    assert list(opened.exit_layers) == [14] and opened.num_layers == 28
    assert opened.prefill_ms == 12.5 and opened.target == "target"


def test_token_replies() -> None:
    assert nothing_left_reply() == pb.ServerMessage(tokens=pb.Tokens(ids=[], finished=True))
    assert decoded_token_reply(5, False, 2.0) == pb.ServerMessage(tokens=pb.Tokens(ids=[5], compute_ms=2.0))
    assert committed_tokens_reply([1, 2, 3], True, 4.0, 1.5, 4, 2) == pb.ServerMessage(
        tokens=pb.Tokens(
            ids=[1, 2, 3],
            finished=True,
            compute_ms=4.0,
            draft_ms=1.5,
            drafted=4,
            accepted=2,
        )
    )


def test_verdict_replies_carry_their_timings() -> None:
    verdict = SimpleNamespace(accepted=2, next_token=8)
    early = early_verdict_reply(4, 14, verdict, 0.9, 0.003).early  # type: ignore[arg-type]
    assert (early.round, early.exit_layer, early.accepted, early.next_token) == (4, 14, 2, 8)
    assert early.elapsed_ms == 3.0 and abs(early.confidence - 0.9) < 1e-6
    final_action = SimpleNamespace(round=4, finished=False, pipelined=True)
    judge = SimpleNamespace(verdicts=[SimpleNamespace(layer=14, elapsed_s=0.002)])
    result = JobResult(value=None, forward_ms=30.0, queued_ms=5.0, batch_size=2)
    final = final_verdict_reply(final_action, verdict, result, judge).final  # type: ignore[arg-type]
    assert (final.round, final.accepted, final.next_token, final.finished, final.pipelined) == (4, 2, 8, False, True)
    assert (final.verify_ms, final.queued_ms) == (30.0, 5.0)
    assert [(t.name, t.ms) for t in final.timings] == [("exit 14", 2.0)]
    assert list(final_verdict_reply(final_action, verdict, result, None).final.timings) == []  # type: ignore[arg-type]


def test_errors_keep_their_code_whether_named_or_from_the_wire() -> None:
    assert error_reply(Refused("TOO_LARGE", "too long")).error == pb.Error(code=pb.TOO_LARGE, message="too long")
    assert error_reply(ProtocolError(pb.OUT_OF_ORDER, "late")).error == pb.Error(code=pb.OUT_OF_ORDER, message="late")
    assert internal_error_reply(KeyError("x")).error == pb.Error(code=pb.INTERNAL, message="internal error: 'x'")
    assert dropped_reply(6) == pb.ServerMessage(dropped=pb.Dropped(round=6))
