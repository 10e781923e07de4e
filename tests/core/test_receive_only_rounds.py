"""The edge side of cloud-ar and cloud-sd (and edge-only, which never asks the server): it commits
what each server pass sends, counts it, and finishes with the same reasons as the speculative
modes (EOS when the text ends in one, else length), whatever driver runs it."""

from __future__ import annotations

import pytest

from edgespec.core.cloud_ar import CloudRoundDecided, ReceiveOnlyRounds, ReceiveState, TokensDecoded
from edgespec.core.config import GenerationConfig
from edgespec.core.edge_events import Commit, Finished
from edgespec.core.edge_only import EdgeOnlyRounds, TokenChosen
from edgespec.core.errors import ProtocolViolation
from edgespec.core.generation import Generation
from edgespec.core.modes import Mode

PROMPT = [1, 2, 3]


def receiver(mode: Mode, eos: frozenset[int] = frozenset({9})) -> ReceiveOnlyRounds:
    return ReceiveOnlyRounds(Generation(PROMPT, mode, GenerationConfig(max_new_tokens=4), eos_ids=eos))


def decoded(token: int, finished: bool = False, at: float = 0.0) -> TokensDecoded:
    return TokensDecoded(tokens=[token], finished=finished, compute_s=0.5, at=at)


def test_cloud_ar_commits_each_decode_and_finishes_at_eos() -> None:
    rounds = receiver(Mode.CLOUD_AR)
    assert rounds.tokens_decoded(decoded(7, at=1.0)) == [Commit([7])]
    assert rounds.tokens_decoded(decoded(9, finished=True, at=2.0)) == [Commit([9]), Finished("eos")]
    stats = rounds.gen.stats
    assert rounds.gen.new_tokens == [7, 9] and stats.finish_reason == "eos" and rounds.state is ReceiveState.FINISHED
    assert stats.rounds == 2 and stats.target_passes == 2 and stats.server_verify_s == 1.0 and stats.ttft_s == 1.0


def test_cloud_ar_finishes_by_length_when_the_text_does_not_end_in_eos() -> None:
    rounds = receiver(Mode.CLOUD_AR)
    for token in (4, 5, 6):
        rounds.tokens_decoded(decoded(token))
    assert rounds.tokens_decoded(decoded(7, finished=True))[-1] == Finished("length")


def test_cloud_sd_counts_rounds_but_not_an_empty_resumed_reply() -> None:
    rounds = receiver(Mode.CLOUD_SD)
    decided = CloudRoundDecided(tokens=[4, 5], finished=False, drafted=3, accepted=1, draft_s=0.1, verify_s=0.2, at=1.0)
    assert rounds.cloud_round_decided(decided) == [Commit([4, 5])]
    stats = rounds.gen.stats
    assert (stats.rounds, stats.drafted, stats.accepted, stats.server_draft_s) == (1, 3, 1, 0.1)
    empty = CloudRoundDecided(tokens=[], finished=True, drafted=0, accepted=0, draft_s=0.0, verify_s=0.0, at=2.0)
    assert rounds.cloud_round_decided(empty) == [Commit([]), Finished("length")]
    assert stats.rounds == 1


def test_a_message_after_the_end_is_a_protocol_violation() -> None:
    rounds = receiver(Mode.CLOUD_AR)
    rounds.tokens_decoded(decoded(9, finished=True))
    with pytest.raises(ProtocolViolation):
        rounds.tokens_decoded(decoded(4))


def test_edge_only_commits_each_chosen_token_and_stops_at_eos_or_the_budget() -> None:
    gen = Generation(PROMPT, Mode.EDGE_ONLY, GenerationConfig(max_new_tokens=3), eos_ids=frozenset({9}))
    rounds = EdgeOnlyRounds(gen)
    assert rounds.token_chosen(TokenChosen(token=4, start=0.0, end=0.5)) == [Commit([4])]
    assert rounds.token_chosen(TokenChosen(token=9, start=0.5, end=1.0)) == [Commit([9]), Finished("eos")]
    assert gen.new_tokens == [4, 9] and gen.stats.rounds == 2 and gen.stats.draft_s == 1.0 and gen.stats.ttft_s == 0.5
    with pytest.raises(ProtocolViolation):
        rounds.token_chosen(TokenChosen(token=4, start=1.0, end=1.5))
    short = EdgeOnlyRounds(Generation(PROMPT, Mode.EDGE_ONLY, GenerationConfig(max_new_tokens=1)))
    assert short.token_chosen(TokenChosen(token=4, start=0.0, end=0.1))[-1] == Finished("length")
