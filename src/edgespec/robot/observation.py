"""The simulator's state as something a language model can read: the goal, each object's bearing
and distance from the robot, the walls, and what the last action did.

An observation may also carry an image (a rendered frame from the robot's point of view or the
chase camera): a vision-language model reads ``image``; a text model reads ``text`` alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgespec.robot.actions import ACTION_FORMAT, Action, describe
from edgespec.robot.controller import MotionReport
from edgespec.robot.world import Go2World

SYSTEM_PROMPT = (
    "You control a four-legged robot dog in a walled room. Each turn you get what the robot senses "
    "and you choose its next action. Bearings are in degrees from straight ahead: 0 is ahead, "
    "positive is to your left, negative is to your right. Distances are in metres. To reach an "
    "object: turn by its bearing, then walk its distance.\n" + ACTION_FORMAT
)


@dataclass
class Observation:
    text: str
    image: NDArray[np.uint8] | None = None  # for a vision-language model; text models ignore it
    pose: dict[str, float] = field(default_factory=dict)

    def messages(self) -> list[dict[str, Any]]:
        """Chat messages for a text model: the fixed system prompt first, so it is the shared
        prefix every decision re-sends (what a prefix cache would keep)."""
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": self.text}]


def _wall_ahead(world: Go2World) -> float:
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


def observe(world: Go2World, task: str, step: int, max_steps: int, last: tuple[Action, MotionReport] | None, image: NDArray[np.uint8] | None = None) -> Observation:
    # The step line sits early although it changes every step (it costs the prefix cache a few
    # tokens): Qwen2.5-Coder-1.5B followed the layout this way, and turned back and forth with
    # the step line at the end (measured, README "Robot").
    lines = [f"Task: {task}.", f"Step {step} of {max_steps}.", "You see:"]
    for obj in world.arena.objects:
        distance, bearing = world.relative(obj)
        lines.append(f"- {obj.name}: bearing {bearing:+.0f} degrees, distance {distance:.1f} m")
    lines.append(f"- wall straight ahead: distance {_wall_ahead(world):.1f} m")
    if last is None:
        lines.append("Last action: none yet.")
    else:
        action, report = last
        effect = f"walked {report.walked_m:.2f} m" if action.as_dict()["action"] == "walk" else f"turned {report.turned_deg:+.0f} degrees"
        if action.as_dict()["action"] == "stop":
            effect = "stood still"
        tail = {"done": "", "timeout": " (it did not finish in time)", "collision": f" and bumped into {', '.join(report.touched)}", "fall": " and fell", "goal": " and reached the goal"}[report.ended]
        lines.append(f"Last action: {describe(action)}: {effect}{tail}.")
    lines.append("Your action:")
    x, y, _ = world.position()
    return Observation("\n".join(lines), image, {"x": round(float(x), 3), "y": round(float(y), 3), "heading_deg": round(math.degrees(world.heading()), 2)})
