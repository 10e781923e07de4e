"""The simulator's state as something a language model can read — each object's distance and
direction, with the action that faces or reaches it; the wall ahead; what the last action did —
and the conversation each decision is asked in.

An observation may also carry an image (a rendered frame from the robot's point of view or the
chase camera): a vision-language model reads ``image``; a text model reads ``text`` alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgespec.robot.actions import ACTION_FORMAT, MAX_WALK_M, Action, describe
from edgespec.robot.controller import MotionReport
from edgespec.robot.world import Go2World

AHEAD_DEG = 10.0  # within this bearing an object counts as straight ahead: walk, do not turn

# The rules, the sign convention and worked examples, once per episode at the start of the
# conversation (the shared prefix every decision re-sends), then the task. The examples are from another room
# (other objects, other numbers): they show the form of a decision, not this episode's answers.
SYSTEM_PROMPT = (
    "You control a four-legged robot dog in a walled room.\n"
    "Each turn you get what the robot senses now, and you answer with its next action.\n"
    "Each object is listed with its distance, its direction, and the action that faces it or "
    "reaches it. A turn by positive degrees turns left, by negative degrees turns right.\n"
    "How to reach the object of your task: if it is to your left or right, turn to face it; when it "
    "is straight ahead, walk to it (at most 3 m per step). The robot has reached an object when it "
    "is within 0.6 m of it, and then stops by itself.\n"
    + ACTION_FORMAT
    + "\nExamples from another room, where the task is to go to the yellow chair:\n"
    'Senses: - purple bin: 2.0 m away, 40 degrees to your left (to face it: {"action": "turn", "degrees": 40}) '
    '- yellow chair: 3.2 m away, 70 degrees to your right (to face it: {"action": "turn", "degrees": -70})\n'
    'Answer: {"action": "turn", "degrees": -70}\n'
    'Senses: - yellow chair: 3.1 m away, straight ahead (to reach it: {"action": "walk", "metres": 3})\n'
    'Answer: {"action": "walk", "metres": 3}\n'
    'Senses: - yellow chair: 1.9 m away, 145 degrees to your left (to face it: {"action": "turn", "degrees": 145})\n'
    'Answer: {"action": "turn", "degrees": 145}\n'
    # Last, so that everything above is the same for every task (a prefix cache shares it).
    "Your task: {task}."
)


def system_prompt(task: str) -> str:
    return SYSTEM_PROMPT.replace("{task}", task)


@dataclass
class Observation:
    text: str  # one user turn: what the robot senses now
    image: NDArray[np.uint8] | None = None  # for a vision-language model; text models ignore it
    pose: dict[str, float] = field(default_factory=dict)


class Conversation:
    """The chat a decision is asked in: the system prompt with the task, then earlier steps as
    turns (their observation, any re-ask, the reply that was acted on), then the new observation.

    Consecutive decisions share everything but the newest turn, so a cache of the previous
    decision's prompt and reply covers all the next one re-sends (server prefix cache, the edge
    draft's cache, ``--reuse-context`` in process). At most ``max_turns`` earlier steps are kept;
    dropping the oldest breaks the shared prefix at that point, once per dropped step."""

    def __init__(self, task: str, max_turns: int = 8) -> None:
        if max_turns < 0:
            raise ValueError(f"max_turns must be >= 0, got {max_turns}")
        self.system = {"role": "system", "content": system_prompt(task)}
        self.max_turns = max_turns
        self.steps: list[list[dict[str, Any]]] = []

    def messages(self, observation: str) -> list[dict[str, Any]]:
        kept = self.steps[max(0, len(self.steps) - self.max_turns) :] if self.max_turns else []
        return [self.system, *(m for step in kept for m in step), {"role": "user", "content": observation}]

    def record(self, exchange: list[dict[str, Any]]) -> None:
        """A finished step: its observation and the messages after it (re-asks, the last reply)."""
        self.steps.append(list(exchange))


def describe_object(name: str, distance: float, bearing: float) -> str:
    """One sensed object: its distance, its direction in words, and the action that faces it
    (or, straight ahead, reaches it) written as the action is written — a small model copied the
    sign of a bearing wrongly, never that of an action it is shown."""
    if abs(bearing) <= AHEAD_DEG:
        walk = min(MAX_WALK_M, max(0.1, round(distance, 1)))
        return (
            f'- {name}: {distance:.1f} m away, straight ahead (to reach it: {{"action": "walk", "metres": {walk:g}}})'
        )
    side = "left" if bearing > 0 else "right"
    return (
        f"- {name}: {distance:.1f} m away, {abs(bearing):.0f} degrees to your {side} "
        f'(to face it: {{"action": "turn", "degrees": {bearing:.0f}}})'
    )


def wall_ahead(world: Go2World) -> float:
    """Metres from the trunk to the wall straight ahead (the arena is a square)."""
    x, y, _ = world.position()
    heading = world.heading()
    dx, dy = math.cos(heading), math.sin(heading)
    extent = world.arena.half_extent - 0.05
    distances = []
    for position, direction in ((x, dx), (y, dy)):
        if abs(direction) > 1e-9:
            wall = extent if direction > 0 else -extent
            distances.append((wall - position) / direction)
    return max(0.0, min(distances))


def observe(
    world: Go2World,
    task: str,
    step: int,
    max_steps: int,
    last: tuple[Action, MotionReport] | None,
    image: NDArray[np.uint8] | None = None,
) -> Observation:
    lines = [f"Step {step} of {max_steps}."]
    if last is None:
        lines.append("Last action: none yet.")
    else:
        action, report = last
        kind = action.as_dict()["action"]
        effect = {
            "walk": f"the robot walked {report.walked_m:.1f} m",
            "turn": f"the robot turned {report.turned_deg:+.0f} degrees",
            "stop": "the robot stood still",
        }[kind]
        tail = {
            "done": "",
            "timeout": " (it did not finish in time)",
            "collision": f" and bumped into {', '.join(report.touched)}",
            "fall": " and fell",
            "goal": " and reached the goal",
        }[report.ended]
        lines.append(f"Last action: {describe(action)}; {effect}{tail}.")
    lines.append("The robot senses:")
    for obj in world.arena.objects:
        distance, bearing = world.relative(obj)
        lines.append(describe_object(obj.name, distance, bearing))
    lines.append(f"- wall straight ahead: {wall_ahead(world):.1f} m away")
    lines.append(f'Your next action for the task "{task}":')
    x, y, _ = world.position()
    return Observation(
        "\n".join(lines),
        image,
        {"x": round(float(x), 3), "y": round(float(y), 3), "heading_deg": round(math.degrees(world.heading()), 2)},
    )
