"""The robot's action language: one JSON object per decision, parsed strictly.

{"action": "turn", "degrees": D}   D in [-180, 180], positive turns left (counter-clockwise)
{"action": "walk", "metres": M}    M in (0, 3], straight ahead
{"action": "stop"}                 the robot believes it has arrived
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Union

MAX_TURN_DEG = 180.0
MAX_WALK_M = 3.0

ACTION_FORMAT = (
    "Answer with exactly one JSON object and nothing else, one of:\n"
    '{"action": "turn", "degrees": D}  (D from -180 to 180; positive turns left, negative turns right)\n'
    '{"action": "walk", "metres": M}  (M from 0.1 to 3; walks straight ahead)\n'
    '{"action": "stop"}  (only when you have reached the goal)'
)


class ActionError(ValueError):
    """The model's reply is not one valid action; the message says why, for the log and the re-ask."""


@dataclass(frozen=True)
class Turn:
    degrees: float

    def as_dict(self) -> dict[str, Any]:
        return {"action": "turn", "degrees": self.degrees}


@dataclass(frozen=True)
class Walk:
    metres: float

    def as_dict(self) -> dict[str, Any]:
        return {"action": "walk", "metres": self.metres}


@dataclass(frozen=True)
class Stop:
    def as_dict(self) -> dict[str, Any]:
        return {"action": "stop"}


Action = Union[Turn, Walk, Stop]


def describe(action: Action) -> str:
    if isinstance(action, Turn):
        return f"turn {action.degrees:+g} degrees"
    if isinstance(action, Walk):
        return f"walk {action.metres:g} m"
    return "stop"


def _number(payload: dict[str, Any], key: str) -> float:
    if key not in payload:
        raise ActionError(f'"{payload["action"]}" needs a "{key}" number')
    value = payload[key]
    # bool is an int in Python; "true" degrees is not a number a person meant.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ActionError(f'"{key}" must be a finite number, got {json.dumps(value)}')
    return float(value)


def parse_action(text: str) -> Action:
    """The first JSON object in ``text`` as an action, or ActionError saying what is wrong.

    Text around the object (a code fence, a sentence) is tolerated, since instruct models add it;
    the object itself must be exactly one valid action with no other keys.
    """
    start = text.find("{")
    if start < 0:
        raise ActionError("no JSON object in the reply")
    try:
        payload, _ = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError as error:
        raise ActionError(f"the JSON object does not parse: {error.msg}") from None
    if not isinstance(payload, dict):
        raise ActionError("the reply must be a JSON object")
    kind = payload.get("action")
    allowed_keys = {"turn": {"action", "degrees"}, "walk": {"action", "metres"}, "stop": {"action"}}
    if kind not in allowed_keys:
        raise ActionError(f'"action" must be "turn", "walk" or "stop", got {json.dumps(kind)}')
    extra = sorted(set(payload) - allowed_keys[kind])
    if extra:
        raise ActionError(f'unexpected key(s) for "{kind}": {", ".join(extra)}')
    if kind == "turn":
        degrees = _number(payload, "degrees")
        if not -MAX_TURN_DEG <= degrees <= MAX_TURN_DEG:
            raise ActionError(f'"degrees" must be within -180..180, got {degrees:g}')
        return Turn(degrees)
    if kind == "walk":
        metres = _number(payload, "metres")
        if not 0.0 < metres <= MAX_WALK_M:
            raise ActionError(f'"metres" must be more than 0 and at most {MAX_WALK_M:g}, got {metres:g}')
        return Walk(metres)
    return Stop()


WALL_MARGIN_M = 0.4  # the trunk's centre to its nose, and a little room


def check_feasible(action: Action, wall_ahead_m: float) -> None:
    """ActionError when the action is clearly wrong for where the robot is: a walk that would
    run into the wall straight ahead (the re-ask tells the model how far it can go)."""
    if isinstance(action, Walk) and action.metres > wall_ahead_m - WALL_MARGIN_M:
        room = max(0.0, wall_ahead_m - WALL_MARGIN_M)
        hint = f"walk at most {room:.1f} m" if room >= 0.1 else "turn first"
        raise ActionError(
            f"the wall is {wall_ahead_m:.1f} m straight ahead, so walking {action.metres:g} m would hit it: {hint}"
        )


# The resolution the schema allows: whole degrees, tenths of a metre. The controller turns to within
# 4 degrees and walks to within 3 cm, so finer numbers change nothing; and with bounded digits every
# schema-valid reply is a few tokens long, so none is cut off by the token limit.
WALK_STEP_M = 0.1
SPACED = (", ", ": ")  # the layout of ACTION_FORMAT, the one the prompt shows the model
COMPACT = (",", ":")


def walk_limit(wall_ahead_m: float | None) -> float:
    """The longest walk ``check_feasible`` accepts with the wall that far ahead, in whole tenths
    (0.0: none is)."""
    room = MAX_WALK_M if wall_ahead_m is None else min(MAX_WALK_M, wall_ahead_m - WALL_MARGIN_M)
    return round(math.floor(max(0.0, room) / WALK_STEP_M + 1e-9) * WALK_STEP_M, 1)


def action_schema(wall_ahead_m: float | None = None, separators: tuple[str, str] = SPACED) -> dict[str, Any]:
    """The action language as a JSON schema: every reply it admits passes ``parse_action`` and
    ``check_feasible`` (given the wall ``wall_ahead_m`` ahead), so constrained by it the model
    cannot answer with an invalid action. ``separators`` (item, key, as ``json.dumps`` takes them)
    fix the layout, since free whitespace would let a reply run on past the token limit; a walk is
    left out where the wall leaves no room for the shortest one."""
    item, key = separators
    choices: list[dict[str, Any]] = [
        _object("turn", {"degrees": {"type": "integer", "minimum": -int(MAX_TURN_DEG), "maximum": int(MAX_TURN_DEG)}})
    ]
    longest = walk_limit(wall_ahead_m)
    if longest >= WALK_STEP_M:
        # "minimum": one step, not "exclusiveMinimum": 0: llguidance admits 0 under the latter.
        metres = {"type": "number", "minimum": WALK_STEP_M, "maximum": longest, "multipleOf": WALK_STEP_M}
        choices.append(_object("walk", {"metres": metres}))
    choices.append(_object("stop", {}))
    layout = {"whitespace_flexible": False, "item_separator": item, "key_separator": key}
    return {"anyOf": choices, "x-guidance": layout}


def _object(kind: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"action": {"const": kind}, **arguments},
        "required": ["action", *arguments],
        "additionalProperties": False,
    }
