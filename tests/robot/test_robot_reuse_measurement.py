"""`edgespec robot-reuse`'s bookkeeping: each decision is asked cold and warm, the warm answer is
acted on, and the summary covers the decisions after the first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgespec.cli import build_parser
from edgespec.robot.decision import Decision
from edgespec.robot.reuse_measurement import PairedDecider, last_session_cached_tokens, reuse_summary


class Scripted:
    """A decision source answering with fixed TTFTs, one per call."""

    def __init__(self, ttfts: list[float], tokens: list[int]) -> None:
        self.ttfts, self.tokens, self.asked = list(ttfts), tokens, 0

    def decide(self, messages: list[dict[str, Any]], schema: dict[str, Any] | None = None) -> Decision:
        self.asked += 1
        ttft = self.ttfts.pop(0)
        return Decision(text="walk 1", tokens=self.tokens, prompt_tokens=100, latency_s=ttft + 1.0, ttft_s=ttft)


def test_each_decision_is_asked_both_ways_and_the_warm_answer_is_acted_on() -> None:
    cold, warm = Scripted([4.0, 4.0, 6.0], [1, 2]), Scripted([4.0, 2.0, 2.0], [1, 2])
    cached = iter([0, 60, 80])
    seen: list[dict[str, Any]] = []
    decider = PairedDecider(cold, warm, lambda: next(cached), on_row=seen.append)
    decisions = [decider.decide([{"role": "user", "content": "go"}]) for _ in range(3)]
    assert cold.asked == warm.asked == 3
    assert [d.ttft_s for d in decisions] == [4.0, 2.0, 2.0]
    assert [r["prefilled_tokens"] for r in decider.rows] == [100, 40, 20]
    assert seen == decider.rows

    summary = reuse_summary(decider.rows)
    assert summary["decisions"] == 3 and summary["same_tokens"] is True
    assert summary["later_decisions_ttft_ratio_median"] == 2.5
    assert summary["later_decisions_prefilled_tokens_median"] == 30


def test_a_single_decision_has_no_later_medians() -> None:
    decider = PairedDecider(Scripted([1.0], [1]), Scripted([1.0], [2]), lambda: 0)
    decider.decide([])
    assert reuse_summary(decider.rows) == {"decisions": 1, "same_tokens": False}


def test_the_warm_sessions_cached_positions_come_from_the_servers_last_opened_session(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("session a opened: 283 prompt tokens (0 cached)\nsession b opened: 290 prompt tokens (182 cached)\n")
    assert last_session_cached_tokens(log) == 182
    log.write_text("nothing yet\n")
    assert last_session_cached_tokens(log) == -1


def test_the_command_line_parses_robot_reuse() -> None:
    args = build_parser().parse_args(["robot-reuse", "--where", "local", "--steps", "2"])
    assert (args.where, args.steps, args.mode, args.profile) == ("local", 2, "sd", "wan")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["robot-reuse", "--where", "mars"])
