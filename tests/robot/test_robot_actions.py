"""The action parser: exactly one valid action, or an ActionError that says what is wrong."""

from __future__ import annotations

import pytest

from edgespec.robot.actions import ActionError, Stop, Turn, Walk, parse_action


@pytest.mark.parametrize(
    "text, action",
    [
        ('{"action": "turn", "degrees": -45}', Turn(-45.0)),
        ('{"action":"walk","metres":1.5}', Walk(1.5)),
        ('{"action": "stop"}', Stop()),
        ('```json\n{"action": "turn", "degrees": 30.5}\n```', Turn(30.5)),  # a fence around it is tolerated
        ('Sure. {"action": "walk", "metres": 3} and then more text', Walk(3.0)),
        ('{"action": "turn", "degrees": 180}', Turn(180.0)),
    ],
)
def test_valid_actions_parse(text: str, action: object) -> None:
    assert parse_action(text) == action


@pytest.mark.parametrize(
    "text, reason",
    [
        ("turn left a bit", "no JSON object"),
        ('{"action": "turn", "degrees": }', "does not parse"),
        ('{"action": "fly"}', '"action" must be'),
        ('{"degrees": 10}', '"action" must be'),
        ('{"action": "turn"}', 'needs a "degrees"'),
        ('{"action": "turn", "degrees": "left"}', "finite number"),
        ('{"action": "turn", "degrees": true}', "finite number"),
        ('{"action": "turn", "degrees": 270}', "within -180..180"),
        ('{"action": "walk", "metres": 0}', "more than 0"),
        ('{"action": "walk", "metres": 12}', "at most 3"),
        ('{"action": "walk", "metres": 1, "speed": 2}', "unexpected key"),
        ('{"action": "stop", "degrees": 3}', "unexpected key"),
        ("[1, 2]", "no JSON object"),
        ('{"action": "walk", "metres": NaN}', "finite number"),
    ],
)
def test_invalid_actions_say_why(text: str, reason: str) -> None:
    with pytest.raises(ActionError, match=reason):
        parse_action(text)


def test_a_walk_into_the_wall_is_infeasible_and_the_error_says_how_far() -> None:
    from edgespec.robot.actions import check_feasible

    check_feasible(Walk(2.0), wall_ahead_m=3.0)
    check_feasible(Turn(90.0), wall_ahead_m=0.2)
    with pytest.raises(ActionError, match="walk at most 1.6 m"):
        check_feasible(Walk(2.5), wall_ahead_m=2.0)
    with pytest.raises(ActionError, match="turn first"):
        check_feasible(Walk(0.5), wall_ahead_m=0.3)


def test_the_conversation_keeps_earlier_steps_as_turns_and_drops_the_oldest() -> None:
    from edgespec.robot.observation import Conversation

    conversation = Conversation("walk to the red box", max_turns=2)
    first = conversation.messages("obs 1")
    assert [m["role"] for m in first] == ["system", "user"] and "walk to the red box" in first[0]["content"]
    for step in (1, 2, 3):
        conversation.record(
            [{"role": "user", "content": f"obs {step}"}, {"role": "assistant", "content": f"reply {step}"}]
        )
    messages = conversation.messages("obs 4")
    # The two latest steps, then the new observation: each prompt extends the previous one
    # until a step is dropped.
    assert [m["content"] for m in messages[1:]] == ["obs 2", "reply 2", "obs 3", "reply 3", "obs 4"]
    assert Conversation("x", max_turns=0).messages("now")[1:] == [{"role": "user", "content": "now"}]


def test_the_comparison_reports_the_first_and_the_later_decisions_apart() -> None:
    from edgespec.cli.robot_report import compare_report

    def summary(mode: str, latencies: list[float], actions: list[str]) -> dict:
        return {
            "mode": mode,
            "task": "walk to the red box",
            "cpu": "test",
            "outcome": "success",
            "steps": len(actions),
            "asks": len(latencies),
            "latency_p50_s": sorted(latencies)[len(latencies) // 2],
            "latency_p90_s": max(latencies),
            "ttft_p50_s": 1.0,
            "motion_s": 1.0,
            "decision_s": sum(latencies),
            "completion_s": 2.0,
            "replies": actions,
            "actions": actions,
            "first_latency_s": latencies[0],
            "later_latency_p50_s": sorted(latencies[1:])[len(latencies[1:]) // 2] if len(latencies) > 1 else None,
        }

    report = compare_report(
        [
            summary("cloud-ar", [14.0, 9.0, 9.0], ["walk", "turn", "walk"]),
            summary("sd-ee-pipelined", [12.6, 6.3], ["turn", "walk"]),
        ],
        "wan",
    )
    assert "| sd-ee-pipelined | 12600 ms | 0.90× | 6300 ms | 0.70× |" in report
    assert "episodes differ" in report
    same = compare_report([summary("cloud-ar", [10.0], ["turn"]), summary("sd", [8.0], ["turn"])], "wan")
    assert "| sd | 8000 ms | 0.80× | – | – |" in same and "episodes differ" not in same
