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
