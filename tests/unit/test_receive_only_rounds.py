"""The edge side of cloud-ar and cloud-sd: it commits what each server pass sends, counts it, and
finishes with the same reasons as the speculative modes (EOS when the text ends in one, else
length), whatever driver runs it."""

from __future__ import annotations

import pytest

from edgespec.core.cloud_ar import CloudRoundDecided, ReceiveOnlyRounds, ReceiveState, TokensDecoded
from edgespec.core.config import GenerationConfig
from edgespec.core.edge_events import Commit, Finished
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
