"""The round core without models, sockets or clocks: events in, actions out."""

from __future__ import annotations

import pytest

from edgespec.core.block import DraftBlock
from edgespec.core.branch_payoff import BranchPayoff, runner_up_verdicts
from edgespec.core.config import GenerationConfig
from edgespec.core.edge import EdgeRounds
from edgespec.core.edge_events import CancelDraft, Draft, Drafted, EarlyVerdictArrived, FinalVerdictArrived, SendBlock
from edgespec.core.errors import ProtocolViolation
from edgespec.core.generation import Generation
from edgespec.core.modes import Mode
from edgespec.core.verdict import Verdict
from edgespec.core.verifier import (
    Drop,
    ExitReached,
    IncomingBlock,
    OutOfOrder,
    Reject,
    SendFinal,
    StreamEarly,
    Verified,
    VerifierRounds,
    Verify,
)

PROMPT = [1, 2, 3]


def final(
    round_index: int,
    verdict: Verdict,
    *,
    verify_s: float,
    at: float,
    server_finished: bool = False,
    pipelined: bool = False,
) -> FinalVerdictArrived:
    return FinalVerdictArrived(
        round=round_index,
        verdict=verdict,
        server_finished=server_finished,
        pipelined=pipelined,
        verify_s=verify_s,
        at=at,
    )


def drafted(draft_id: int, block: DraftBlock, start: float, end: float) -> Drafted:
    return Drafted(draft_id=draft_id, block=block, start=start, end=end)


def early(round_index: int, layer: int, verdict: Verdict, at: float) -> EarlyVerdictArrived:
    return EarlyVerdictArrived(round=round_index, layer=layer, verdict=verdict, at=at)


def rounds(mode: Mode, **config: object) -> EdgeRounds:
    return EdgeRounds(Generation(PROMPT, mode, GenerationConfig(**config)))  # type: ignore[arg-type]


def kinds(actions: list[object]) -> list[str]:
    return [type(a).__name__ for a in actions]


def test_sd_round_drafts_sends_and_commits() -> None:
    client = rounds(Mode.SD, gamma=3, max_new_tokens=10)
    (draft,) = client.started()
    assert isinstance(draft, Draft) and draft.sequence == PROMPT and draft.gamma == 3
    (send,) = client.drafted(drafted(draft.id, DraftBlock([7, 8, 9]), 0.0, 0.1))
    assert isinstance(send, SendBlock) and send.round == 0 and send.assumes is None
    actions = client.final_verdict_arrived(final(0, Verdict(2, 5), verify_s=0.2, at=0.4))
    assert kinds(actions) == ["Commit", "Draft"]
    assert actions[0].tokens == [7, 8, 5]
    assert actions[1].sequence == PROMPT + [7, 8, 5]
    assert (
        client.gen.stats.rounds == 1
        and client.gen.stats.accepted == 2
        and client.gen.stats.wait_s == pytest.approx(0.3)
    )


def test_the_block_never_runs_past_the_token_budget_and_eos_finishes() -> None:
    client = rounds(Mode.SD, gamma=4, max_new_tokens=3, eos_ids=frozenset({9}))
    (draft,) = client.started()
    assert draft.gamma == 3
    client.drafted(drafted(draft.id, DraftBlock([7, 9, 8]), 0, 0))
    actions = client.final_verdict_arrived(final(0, Verdict(3, 4), verify_s=0, at=0))
    assert kinds(actions) == ["Commit", "Finished"] and actions[0].tokens == [7, 9]
    assert client.gen.stats.finish_reason == "eos"


def test_predraft_hit_sends_the_predraft_at_once() -> None:
    client = rounds(Mode.SD_EE_PREDRAFT, gamma=2, max_new_tokens=20, guess_verdict=False, branches=1)
    (draft,) = client.started()
    client.drafted(drafted(draft.id, DraftBlock([7, 8]), 0, 0))
    (pre,) = client.early_verdict_arrived(early(0, 14, Verdict(2, 6), 0.1))
    assert isinstance(pre, Draft) and pre.sequence == PROMPT + [7, 8, 6] and pre.round == 1
    assert client.drafted(drafted(pre.id, DraftBlock([10, 11]), 0.1, 0.2)) == []  # held until the verdict
    actions = client.final_verdict_arrived(final(0, Verdict(2, 6), verify_s=0.3, at=0.3))
    assert (
        kinds(actions) == ["Commit", "SendBlock"] and actions[1].block.tokens == [10, 11] and actions[1].assumes is None
    )
    assert client.gen.stats.hits == 1


def test_predraft_miss_cancels_and_redrafts() -> None:
    client = rounds(Mode.SD_EE_PREDRAFT, gamma=2, max_new_tokens=20, guess_verdict=False, branches=1)
    (draft,) = client.started()
    client.drafted(drafted(draft.id, DraftBlock([7, 8]), 0, 0))
    (pre,) = client.early_verdict_arrived(early(0, 14, Verdict(2, 6), 0.1))
    actions = client.final_verdict_arrived(final(0, Verdict(1, 5), verify_s=0.3, at=0.3))
    assert kinds(actions) == ["Commit", "CancelDraft", "Draft"]
    assert actions[1].id == pre.id and actions[2].sequence == PROMPT + [7, 5]
    assert client.drafted(drafted(pre.id, DraftBlock([10, 11]), 0.1, 0.2)) == []  # a cancelled draft is ignored
    assert client.gen.stats.misses == 1


def test_a_new_early_verdict_replaces_the_predraft() -> None:
    client = rounds(Mode.SD_EE_PREDRAFT, gamma=2, max_new_tokens=20, guess_verdict=False, branches=1)
    (draft,) = client.started()
    client.drafted(drafted(draft.id, DraftBlock([7, 8]), 0, 0))
    (first,) = client.early_verdict_arrived(early(0, 14, Verdict(2, 6), 0.1))
    assert client.early_verdict_arrived(early(0, 21, Verdict(2, 6), 0.15)) == []  # the same verdict again: nothing new
    cancel, second = client.early_verdict_arrived(early(0, 21, Verdict(0, 4), 0.2))
    assert cancel == CancelDraft(first.id) and second.sequence == PROMPT + [4]


def test_pipelined_predraft_ships_tagged_and_is_not_resent_on_a_hit() -> None:
    client = rounds(Mode.SD_EE_PIPELINED, gamma=2, max_new_tokens=20, guess_verdict=False, branches=1)
    (draft,) = client.started()
    client.drafted(drafted(draft.id, DraftBlock([7, 8]), 0, 0))
    (pre,) = client.early_verdict_arrived(early(0, 14, Verdict(2, 6), 0.1))
    (send,) = client.drafted(drafted(pre.id, DraftBlock([10, 11]), 0.1, 0.2))
    assert send.round == 1 and send.assumes == (0, Verdict(2, 6))
    assert client.early_verdict_arrived(early(0, 21, Verdict(0, 4), 0.25)) == []  # shipped: later hints change nothing
    assert kinds(client.final_verdict_arrived(final(0, Verdict(2, 6), verify_s=0.3, at=0.3))) == ["Commit"]
    assert kinds(client.final_verdict_arrived(final(1, Verdict(2, 3), pipelined=True, verify_s=0.3, at=0.6))) == [
        "Commit",
        "Draft",
    ]
    assert client.gen.stats.pipelined == 1


def test_the_guess_branch_starts_at_send_time_and_chains() -> None:
    client = rounds(Mode.SD_EE_PREDRAFT, gamma=2, max_new_tokens=20)
    (draft,) = client.started()
    assert draft.gamma == 2
    send, guess = client.drafted(drafted(draft.id, DraftBlock([7, 8]), 0, 0.1))
    assert send.block.tokens == [7, 8] and isinstance(guess, Draft)
    # The guess drafts on from the block: its first token is the bonus it assumes.
    assert guess.sequence == PROMPT + [7, 8] and guess.gamma == 3
    assert client.drafted(drafted(guess.id, DraftBlock([6, 10, 11]), 0.1, 0.2)) == []
    actions = client.final_verdict_arrived(final(0, Verdict(2, 6), verify_s=0.3, at=0.3))
    # The guess was right: its block leaves at once, and its own guess branch starts.
    assert kinds(actions) == ["Commit", "SendBlock", "Draft"]
    assert actions[1].block.tokens == [10, 11] and actions[2].sequence == PROMPT + [7, 8, 6, 10, 11]
    assert client.gen.stats.hits_by_source == {"guess": 1}


def test_a_guess_still_drafting_is_decided_when_its_bonus_is_known() -> None:
    client = rounds(Mode.SD_EE_PREDRAFT, gamma=2, max_new_tokens=20)
    (draft,) = client.started()
    _, guess = client.drafted(drafted(draft.id, DraftBlock([7, 8]), 0, 0.1))
    assert kinds(client.final_verdict_arrived(final(0, Verdict(2, 6), verify_s=0.3, at=0.15))) == [
        "Commit"
    ]  # wait for it
    (send, next_guess) = client.drafted(drafted(guess.id, DraftBlock([6, 10, 11]), 0.1, 0.2))
    assert send.round == 1 and send.block.tokens == [10, 11] and isinstance(next_guess, Draft)
    # A wrong bonus: the round is redrafted from the verdict.
    client.final_verdict_arrived(final(1, Verdict(2, 4), verify_s=0.3, at=0.4))
    (redraft,) = client.drafted(drafted(next_guess.id, DraftBlock([5, 1, 2]), 0.2, 0.5))
    assert redraft.sequence == PROMPT + [7, 8, 6, 10, 11, 4]
    assert client.gen.stats.hits == 1 and client.gen.stats.misses == 1


def test_a_guess_stopped_after_its_bonus_ships_nothing_and_the_round_is_drafted_afresh() -> None:
    client = rounds(Mode.SD_EE_PIPELINED, gamma=2, max_new_tokens=20)
    (draft,) = client.started()
    _, guess = client.drafted(drafted(draft.id, DraftBlock([7, 8]), 0, 0.1))
    # The guess's draft stopped after the bonus it assumes: no draft token to ship (a block
    # must carry one), so nothing is sent and, when the verdict comes, the round is drafted.
    assert client.drafted(drafted(guess.id, DraftBlock([6]), 0.1, 0.2)) == []
    assert client.gen.stats.branches_shipped == 0
    actions = client.final_verdict_arrived(final(0, Verdict(2, 6), verify_s=0.3, at=0.3))
    assert kinds(actions) == ["Commit", "Draft"] and actions[1].sequence == PROMPT + [7, 8, 6]


def test_a_right_guess_still_drafting_that_stopped_after_its_bonus_is_drafted_afresh() -> None:
    client = rounds(Mode.SD_EE_PREDRAFT, gamma=2, max_new_tokens=20)
    (draft,) = client.started()
    _, guess = client.drafted(drafted(draft.id, DraftBlock([7, 8]), 0, 0.1))
    assert kinds(client.final_verdict_arrived(final(0, Verdict(2, 6), verify_s=0.3, at=0.15))) == ["Commit"]
    (redraft,) = client.drafted(drafted(guess.id, DraftBlock([6]), 0.1, 0.2))
    assert isinstance(redraft, Draft) and redraft.sequence == PROMPT + [7, 8, 6]


def test_a_branch_stopped_before_its_first_token_ships_nothing() -> None:
    client = rounds(Mode.SD_EE_PIPELINED, gamma=2, max_new_tokens=20, branches=2)
    (draft,) = client.started()
    client.drafted(drafted(draft.id, DraftBlock([7, 8]), 0, 0.1))
    (exit_branch,) = client.early_verdict_arrived(early(0, 21, Verdict(1, 4), 0.15))
    assert client.drafted(drafted(exit_branch.id, DraftBlock([]), 0.2, 0.3)) == []
    assert client.gen.stats.branches_shipped == 0


def test_a_rejection_cancels_the_guess_at_once() -> None:
    client = rounds(Mode.SD_EE_PREDRAFT, gamma=2, max_new_tokens=20)
    (draft,) = client.started()
    _, guess = client.drafted(drafted(draft.id, DraftBlock([7, 8]), 0, 0.1))
    actions = client.final_verdict_arrived(final(0, Verdict(1, 4), verify_s=0.3, at=0.15))
    assert kinds(actions) == ["Commit", "CancelDraft", "Draft"] and actions[1].id == guess.id


def test_pipelined_branches_ship_tagged_and_the_right_one_is_used() -> None:
    client = rounds(Mode.SD_EE_PIPELINED, gamma=2, max_new_tokens=20, branches=2)
    (draft,) = client.started()
    _, guess = client.drafted(drafted(draft.id, DraftBlock([7, 8]), 0, 0.1))
    (exit_branch,) = client.early_verdict_arrived(early(0, 21, Verdict(1, 4), 0.15))
    assert exit_branch.sequence == PROMPT + [7, 4]
    (ship_guess,) = client.drafted(drafted(guess.id, DraftBlock([6, 10, 11]), 0.1, 0.2))
    (ship_exit,) = client.drafted(drafted(exit_branch.id, DraftBlock([20, 21]), 0.2, 0.3))
    assert ship_guess.assumes == (0, Verdict(2, 6)) and ship_guess.block.tokens == [10, 11]
    assert ship_exit.assumes == (0, Verdict(1, 4)) and client.gen.stats.branches_shipped == 2
    assert client.early_verdict_arrived(early(0, 24, Verdict(0, 3), 0.35)) == []  # both branches shipped: no room
    actions = client.final_verdict_arrived(final(0, Verdict(1, 4), verify_s=0.3, at=0.4))
    assert kinds(actions) == ["Commit", "Draft"]  # the exit branch is at the server; its guess starts
    assert actions[1].sequence == PROMPT + [7, 4, 20, 21]
    assert client.gen.stats.hits_by_source == {"exit 21": 1}


def test_a_later_exit_replaces_an_unshipped_earlier_branch() -> None:
    client = rounds(Mode.SD_EE_PREDRAFT, gamma=2, max_new_tokens=20, branches=2)
    (draft,) = client.started()
    _, guess = client.drafted(drafted(draft.id, DraftBlock([7, 8]), 0, 0.1))
    (first,) = client.early_verdict_arrived(early(0, 14, Verdict(1, 4), 0.15))
    cancel, second = client.early_verdict_arrived(early(0, 21, Verdict(0, 3), 0.2))
    assert cancel == CancelDraft(first.id)  # the older exit goes, the guess stays
    assert second.sequence == PROMPT + [3]
    actions = client.final_verdict_arrived(final(0, Verdict(0, 9), verify_s=0.3, at=0.4))
    assert kinds(actions) == ["Commit", "CancelDraft", "CancelDraft", "Draft"] and client.gen.stats.misses == 1


def test_guessing_stops_when_it_does_not_pay() -> None:
    client = rounds(Mode.SD_EE_PREDRAFT, gamma=2, max_new_tokens=200)
    (draft,) = client.started()
    at = 0.0
    guesses = 0
    for round_index in range(12):
        # A guess (3 tokens, 0.3 s) outlasts the wait for the verdict (0.1 s): a wrong one costs.
        actions = client.drafted(drafted(draft.id, DraftBlock([7, 8]), at, at + 0.2))
        guess = next((a for a in actions if isinstance(a, Draft)), None)
        guesses += guess is not None
        actions = client.final_verdict_arrived(
            final(round_index, Verdict(0, 5), verify_s=0.05, at=at + 0.3)
        )  # every guess wrong
        draft = next(a for a in actions if isinstance(a, Draft))
        at += 0.3
    assert 0 < guesses < 12


def test_a_final_verdict_for_another_round_is_a_protocol_violation() -> None:
    client = rounds(Mode.SD)
    (draft,) = client.started()
    client.drafted(drafted(draft.id, DraftBlock([7]), 0, 0))
    with pytest.raises(ProtocolViolation):
        client.final_verdict_arrived(final(3, Verdict(0, 1), verify_s=0, at=0))


def server(**kw: object) -> VerifierRounds:
    return VerifierRounds(list(PROMPT), len(PROMPT), frozenset({99}), int(kw.pop("max_new_tokens", 20)), **kw)  # type: ignore[arg-type]


def test_server_verifies_a_pipelined_block_the_moment_its_assumption_holds() -> None:
    rounds_ = server()
    (verify,) = rounds_.block_arrived(IncomingBlock(0, [7, 8]))
    assert isinstance(verify, Verify) and verify.sequence == PROMPT
    assert rounds_.block_arrived(IncomingBlock(1, [10, 11], assumes=(0, Verdict(2, 6)))) == []  # held
    assert rounds_.block_arrived(IncomingBlock(1, [12, 13], assumes=(0, Verdict(1, 6)))) == []  # a second branch
    final, drop, following = rounds_.verified(Verified(verify=verify, verdict=Verdict(2, 6)))
    assert final == SendFinal(0, Verdict(2, 6), [7, 8, 6], False, False)
    assert drop == Drop(1)  # the branch whose assumption failed: no compute
    assert isinstance(following, Verify) and following.pipelined and following.block.tokens == [10, 11]
    assert following.sequence == PROMPT + [7, 8, 6]
    (final,) = rounds_.verified(Verified(verify=following, verdict=Verdict(0, 5)))
    assert final.pipelined and rounds_.held == 0


def test_server_drops_a_block_whose_assumption_failed_and_never_verifies_twice() -> None:
    rounds_ = server()
    (verify,) = rounds_.block_arrived(IncomingBlock(0, [7, 8]))
    rounds_.verified(Verified(verify=verify, verdict=Verdict(0, 5)))
    assert rounds_.block_arrived(IncomingBlock(1, [1], assumes=(0, Verdict(2, 6)))) == [Drop(1)]  # late and wrong
    (again,) = rounds_.block_arrived(IncomingBlock(1, [1]))
    with pytest.raises(OutOfOrder):
        rounds_.block_arrived(IncomingBlock(1, [1]))  # the same round while it is verified
    rounds_.verified(Verified(verify=again, verdict=Verdict(1, 2)))
    with pytest.raises(OutOfOrder):
        rounds_.block_arrived(IncomingBlock(1, [1]))  # a decided round


def test_server_frees_held_blocks_when_the_session_ends() -> None:
    rounds_ = server(early_verdicts=True)
    rounds_.block_arrived(IncomingBlock(0, [7, 8]))
    rounds_.block_arrived(IncomingBlock(1, [10], assumes=(0, Verdict(2, 6))))
    assert rounds_.session_closed() == [Drop(1)] and rounds_.held == 0
    # An exit of the forward still running reports after the end (an error ended the session):
    # nothing more is streamed.
    assert (
        rounds_.exit_reached(
            ExitReached(round=0, layer=21, verdict=Verdict(1, 3), confidence=0.95, elapsed_s=0.02, streamed=True)
        )
        == []
    )


def test_server_finish_drops_tagged_and_rejects_plain_held_blocks() -> None:
    rounds_ = server(max_new_tokens=3)
    (verify,) = rounds_.block_arrived(IncomingBlock(0, [7, 8]))
    rounds_.block_arrived(IncomingBlock(1, [10], assumes=(0, Verdict(2, 6))))
    final, drop = rounds_.verified(Verified(verify=verify, verdict=Verdict(2, 6)))
    assert final.finished and drop == Drop(1)
    rounds2 = server(max_new_tokens=3)
    (verify,) = rounds2.block_arrived(IncomingBlock(0, [7, 8]))
    rounds2.block_arrived(IncomingBlock(1, [10]))
    assert isinstance(rounds2.verified(Verified(verify=verify, verdict=Verdict(2, 6)))[1], Reject)


def test_server_streams_only_confident_early_verdicts_of_the_round_in_flight() -> None:
    rounds_ = server(early_verdicts=True)
    (verify,) = rounds_.block_arrived(IncomingBlock(0, [7, 8]))
    assert (
        rounds_.exit_reached(
            ExitReached(round=0, layer=14, verdict=Verdict(1, 3), confidence=0.5, elapsed_s=0.01, streamed=False)
        )
        == []
    )
    assert rounds_.exit_reached(
        ExitReached(round=0, layer=21, verdict=Verdict(1, 3), confidence=0.95, elapsed_s=0.02, streamed=True)
    ) == [StreamEarly(0, 21, Verdict(1, 3), 0.95, 0.02)]
    rounds_.verified(Verified(verify=verify, verdict=Verdict(1, 3)))
    assert (
        rounds_.exit_reached(
            ExitReached(round=0, layer=21, verdict=Verdict(1, 3), confidence=0.95, elapsed_s=0.02, streamed=True)
        )
        == []
    )


def test_a_resumed_session_ending_in_eos_is_finished() -> None:
    rounds_ = VerifierRounds(PROMPT + [5, 99], len(PROMPT), frozenset({99}), 20)
    assert rounds_.finished
    with pytest.raises(OutOfOrder):
        rounds_.block_arrived(IncomingBlock(0, [1]))


def test_the_guess_gate_guesses_whenever_a_wrong_guess_costs_nothing() -> None:

    gate = BranchPayoff()
    for first in (True, False, False):  # low acceptance: one of four tokens per round
        gate.observe_round(4, 1, draft_s=0.16, wait_s=0.4, first=first)
    assert gate.hit_rate(4) < 0.05
    # 5 drafted tokens at 40 ms finish before the verdict (400 ms): the edge was idle anyway.
    assert gate.pays(gate.hit_rate(4), 0, 5)
    # 11 tokens would still be drafting when the verdict comes: a wrong guess delays the real
    # draft by a step, and at this acceptance a guess is almost always wrong.
    assert not gate.pays(gate.hit_rate(4), 0, 11)
    for _ in range(10):  # every token accepted: a long guess is worth its risk
        gate.observe_round(4, 4, draft_s=0.16, wait_s=0.4, first=False)
    assert gate.pays(gate.hit_rate(4), 0, 11)


def test_runner_up_verdicts_go_likeliest_rejection_first() -> None:

    # Rejection at w ≈ c_0 ⋯ c_(w-1) · (1 − c_w): 0.1, 0.9·0.5 = 0.45, 0.45·0.8 = 0.36.
    block = DraftBlock([7, 8, 9], confidence=[0.9, 0.5, 0.2], runner_up=[17, 18, 9])
    # Position 2's runner-up is its own token (a one-id vocabulary): no branch there.
    assert runner_up_verdicts(block) == [Verdict(1, 18), Verdict(0, 17)]


def test_runner_up_branches_follow_the_guess_and_a_right_one_is_used() -> None:
    client = rounds(Mode.SD_EE_PIPELINED, gamma=3, max_new_tokens=30, branches=3, runner_up=True)
    (draft,) = client.started()
    block = DraftBlock([7, 8, 9], confidence=[0.95, 0.3, 0.9], runner_up=[17, 18, 19])
    send, guess, first, second = client.drafted(drafted(draft.id, block, 0, 0.1))
    assert send.block.tokens == [7, 8, 9] and send.assumes is None
    # The guess drafts first (from the block's end), then the runner-ups, likeliest first.
    assert guess.sequence == PROMPT + [7, 8, 9] and guess.min_tokens == 2
    assert first.sequence == PROMPT + [7, 18] and first.gamma == 3 and first.min_tokens == 1
    assert second.sequence == PROMPT + [17]  # then the rejection at 0 (0.05), before the one at 2 (0.03)
    (ship,) = client.drafted(drafted(first.id, DraftBlock([30, 31, 32]), 0.1, 0.2))
    assert ship.round == 1 and ship.assumes == (0, Verdict(1, 18)) and ship.block.tokens == [30, 31, 32]
    actions = client.final_verdict_arrived(final(0, Verdict(1, 18), verify_s=0.3, at=0.4))
    # The runner-up was right: it is at the server already; the others stop; its own guess starts.
    assert kinds(actions) == ["Commit", "CancelDraft", "CancelDraft", "Draft"]
    assert {a.id for a in actions[1:3]} == {guess.id, second.id}
    assert actions[3].sequence == PROMPT + [7, 18, 30, 31, 32]
    assert client.gen.stats.hits_by_source == {"runner-up": 1}


def test_runner_up_branches_need_branches_beyond_the_guess_and_the_switch() -> None:
    block = DraftBlock([7, 8], confidence=[0.4, 0.9], runner_up=[17, 18])
    for config in ({"branches": 1, "runner_up": True}, {"runner_up": False}):
        client = rounds(Mode.SD_EE_PIPELINED, gamma=2, max_new_tokens=30, **config)  # type: ignore[arg-type]
        (draft,) = client.started()
        assert kinds(client.drafted(drafted(draft.id, block, 0, 0.1))) == ["SendBlock", "Draft"]  # the guess alone
    assert not GenerationConfig(branches=1, runner_up=True).wants_alternatives(Mode.SD_EE_PIPELINED)
    assert not GenerationConfig(runner_up=True).wants_alternatives(Mode.SD)
    assert not GenerationConfig().wants_alternatives(Mode.SD_EE_PREDRAFT)  # off by default
    assert GenerationConfig(runner_up=True).wants_alternatives(Mode.SD_EE_PREDRAFT)


def test_the_gate_drops_runner_ups_that_are_never_right_and_cannot_finish() -> None:

    gate = BranchPayoff()
    for first in (True, False, False):
        gate.observe_round(4, 4, draft_s=0.16, wait_s=0.4, first=first)
    # 4 tokens at 40 ms behind a 5-token guess: done at 360 ms, before the verdict (400 ms).
    assert gate.pays(gate.runner_up_rate(0), 5, 4)
    # Behind 10 queued tokens it could not start before the verdict: it saves nothing.
    assert not gate.pays(1.0, 10, 4)
    for _ in range(10):
        gate.observe_runner_ups([False, False])
    assert gate.runner_up_rate(0) < 0.15
    # Still drafting at the verdict and never right: not worth the step it delays.
    assert not gate.pays(gate.runner_up_rate(0), 8, 4)


def test_runner_ups_leave_a_branch_free_for_early_verdicts() -> None:
    block = DraftBlock([7, 8], confidence=[0.3, 0.9], runner_up=[17, 18])
    client = rounds(Mode.SD_EE_PIPELINED, gamma=2, max_new_tokens=30, branches=2, early_verdicts=True, runner_up=True)
    (draft,) = client.started()
    _, guess = client.drafted(drafted(draft.id, block, 0, 0.1))  # the guess only: the other branch is the exits'
    client.drafted(drafted(guess.id, DraftBlock([6, 10, 11]), 0.1, 0.2))
    (exit_branch,) = client.early_verdict_arrived(early(0, 21, Verdict(1, 4), 0.25))
    assert exit_branch.sequence == PROMPT + [7, 4]
    client = rounds(Mode.SD_EE_PIPELINED, gamma=2, max_new_tokens=30, branches=3, early_verdicts=True, runner_up=True)
    (draft,) = client.started()
    assert kinds(client.drafted(drafted(draft.id, block, 0, 0.1))) == ["SendBlock", "Draft", "Draft"]
