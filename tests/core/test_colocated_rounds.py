"""cloud-sd's machine on the server, without models: it asks for a draft, turns the draft into
the forward to run, commits what the verdict decides, stops at EOS or the budget, and refuses
events out of turn."""

from __future__ import annotations

import pytest

from edgespec.core.block import DraftBlock
from edgespec.core.colocated import ColocatedRounds, ColocatedState, ColocatedVerified, ServerDrafted
from edgespec.core.errors import ProtocolViolation
from edgespec.core.gamma import AdaptiveGamma
from edgespec.core.verdict import Verdict
from edgespec.core.verifier import VerifierRounds

PROMPT = [1, 2, 3]


def colocated(
    max_new_tokens: int = 10, eos: frozenset[int] = frozenset(), gamma: int = 3, **kwargs: object
) -> ColocatedRounds:
    return ColocatedRounds(VerifierRounds(list(PROMPT), len(PROMPT), eos, max_new_tokens), gamma, **kwargs)  # type: ignore[arg-type]


def one_round(
    rounds: ColocatedRounds, tokens: list[int], verdict: Verdict, draft_s: float = 0.1, verify_s: float = 0.2
):
    step = rounds.next_draft()
    assert step is not None
    verify = rounds.drafted(ServerDrafted(step=step, block=DraftBlock(tokens), draft_s=draft_s))
    return (
        step,
        verify,
        rounds.verified(
            ColocatedVerified(verify=verify, verdict=verdict, verify_s=verify_s, round_s=draft_s + verify_s)
        ),
    )


def test_a_round_drafts_after_the_text_verifies_the_block_and_commits_the_verdict() -> None:
    rounds = colocated()
    step, verify, done = one_round(rounds, [7, 8, 9], Verdict(2, 5))
    assert step.round == 0 and step.sequence == PROMPT and step.gamma == 3
    assert verify.sequence == PROMPT and verify.block.tokens == [7, 8, 9] and not verify.pipelined
    assert done.final.committed == [7, 8, 5] and not done.final.finished
    assert (done.drafted, done.draft_s, done.verify_s) == (3, 0.1, 0.2)
    assert rounds.rounds.sequence == PROMPT + [7, 8, 5] and rounds.state is ColocatedState.READY
    following = rounds.next_draft()
    assert following is not None and following.round == 1 and following.sequence == PROMPT + [7, 8, 5]


def test_the_block_length_never_runs_past_the_budget_and_the_budget_finishes() -> None:
    rounds = colocated(max_new_tokens=4, gamma=3)
    one_round(rounds, [7, 8, 9], Verdict(3, 6))  # 4 tokens: the budget is spent
    assert rounds.finished and rounds.state is ColocatedState.FINISHED and rounds.next_draft() is None
    short = colocated(max_new_tokens=2, gamma=3).next_draft()
    assert short is not None and short.gamma == 2


def test_eos_inside_the_block_ends_the_text_there() -> None:
    rounds = colocated(eos=frozenset({8}))
    _, _, done = one_round(rounds, [7, 8, 9], Verdict(3, 6))
    assert done.final.committed == [7, 8] and done.final.finished and rounds.next_draft() is None


def test_events_out_of_turn_are_protocol_violations() -> None:
    rounds = colocated()
    step = rounds.next_draft()
    assert step is not None
    verify = rounds.drafted(ServerDrafted(step=step, block=DraftBlock([7]), draft_s=0.0))
    assert rounds.state is ColocatedState.VERIFYING and rounds.next_draft() is None  # one round at a time
    with pytest.raises(ProtocolViolation):
        rounds.drafted(ServerDrafted(step=step, block=DraftBlock([7]), draft_s=0.0))  # a second draft for it
    rounds.verified(ColocatedVerified(verify=verify, verdict=Verdict(1, 4), verify_s=0.0, round_s=0.0))
    with pytest.raises(ProtocolViolation):
        rounds.verified(ColocatedVerified(verify=verify, verdict=Verdict(1, 4), verify_s=0.0, round_s=0.0))  # twice
    with pytest.raises(ProtocolViolation):
        rounds.drafted(ServerDrafted(step=step, block=DraftBlock([7]), draft_s=0.0))  # a stale round's draft
    fresh = rounds.next_draft()
    assert fresh is not None
    with pytest.raises(ProtocolViolation):
        rounds.drafted(ServerDrafted(step=fresh, block=DraftBlock([]), draft_s=0.0))  # an empty block


def test_the_adaptive_policy_hears_every_round_and_picks_the_next_gamma() -> None:
    policy = AdaptiveGamma(initial=2, max_gamma=6)
    rounds = colocated(max_new_tokens=100, gamma=2, policy=policy)
    for _ in range(4):
        step = rounds.next_draft()
        assert step is not None
        # Every token accepted and a verify that costs the same for any length: longer blocks pay.
        verify = rounds.drafted(
            ServerDrafted(step=step, block=DraftBlock([5] * step.gamma), draft_s=0.001 * step.gamma)
        )
        rounds.verified(ColocatedVerified(verify=verify, verdict=Verdict(step.gamma, 5), verify_s=0.1, round_s=0.2))
    following = rounds.next_draft()
    assert policy.acceptance is not None and following is not None and following.gamma > 2


def test_gamma_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError):
        colocated(gamma=0)
