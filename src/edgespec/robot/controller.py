"""Actions to velocity commands: the walking policy is driven tick by tick (50 Hz) until the
motion is done, the robot touches something, falls, or the goal is reached."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np

from edgespec.robot.actions import Action, Stop, Turn, Walk
from edgespec.robot.world import Go2World, wrap_angle

logger = logging.getLogger(__name__)

WALK_SPEED = 0.5  # m/s
TURN_RATE = 1.0  # rad/s at most
TURN_TOLERANCE_DEG = 4.0
WALK_TOLERANCE_M = 0.03
SETTLE_S = 0.4  # standing still after a motion, so the next observation is of a robot at rest

Ending = Literal["done", "collision", "fall", "timeout", "goal"]


@dataclass
class MotionReport:
    """What an action did, in the world's terms: the effect the next observation reports."""

    duration_s: float = 0.0
    walked_m: float = 0.0  # along the heading at the start
    turned_deg: float = 0.0
    ended: Ending = "done"
    touched: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "duration_s": round(self.duration_s, 3),
            "walked_m": round(self.walked_m, 3),
            "turned_deg": round(self.turned_deg, 2),
            "ended": self.ended,
            "touched": self.touched,
        }


class Controller:
    """Runs one action at a time on the world. ``on_tick`` is called after every policy tick
    (the video recorder samples frames there); ``goal_reached`` ends a motion early."""

    def __init__(
        self,
        world: Go2World,
        on_tick: Callable[[], None] | None = None,
        goal_reached: Callable[[], bool] | None = None,
    ) -> None:
        self.world = world
        self.on_tick = on_tick or (lambda: None)
        self.goal_reached = goal_reached or (lambda: False)

    def execute(self, action: Action) -> MotionReport:
        world = self.world
        start_time, start_heading, start_xy = world.time, world.heading(), world.position()[:2].copy()
        forward = np.array([math.cos(start_heading), math.sin(start_heading)])
        report = MotionReport()
        if isinstance(action, Turn):
            target = start_heading + math.radians(action.degrees)
            timeout = abs(math.radians(action.degrees)) / (0.5 * TURN_RATE) + 2.0

            def command() -> tuple[float, float, float] | None:
                error = wrap_angle(target - world.heading())
                if abs(math.degrees(error)) < TURN_TOLERANCE_DEG:
                    return None
                rate = float(np.clip(2.5 * error, -TURN_RATE, TURN_RATE))
                # Too slow a command and the policy does not turn at all.
                rate = math.copysign(max(abs(rate), 0.3), rate)
                return (0.0, 0.0, rate)

        elif isinstance(action, Walk):
            timeout = action.metres / (0.6 * WALK_SPEED) + 2.0

            def command() -> tuple[float, float, float] | None:
                progress = float((world.position()[:2] - start_xy) @ forward)
                remaining = action.metres - progress
                if remaining < WALK_TOLERANCE_M:
                    return None
                # Slow down near the end: the command slews at 0.05 m/s per tick.
                speed = float(np.clip(1.5 * remaining, 0.2, WALK_SPEED))
                # Hold the starting heading against drift.
                return (speed, 0.0, float(np.clip(2.0 * wrap_angle(start_heading - world.heading()), -0.5, 0.5)))

        elif isinstance(action, Stop):
            timeout = 0.0

            def command() -> tuple[float, float, float] | None:
                return None

        else:
            raise TypeError(f"not an action: {action!r}")

        report.ended = self._drive(command, timeout, report)
        if report.ended in ("done", "timeout", "goal"):
            settle_end = world.time + SETTLE_S
            while world.time < settle_end - 1e-9:
                event = self._tick((0.0, 0.0, 0.0), report)
                if event is not None:
                    report.ended = event
                    break
        report.duration_s = world.time - start_time
        report.walked_m = float((world.position()[:2] - start_xy) @ forward)
        report.turned_deg = math.degrees(wrap_angle(world.heading() - start_heading))
        return report

    def _drive(
        self, command: Callable[[], tuple[float, float, float] | None], timeout: float, report: MotionReport
    ) -> Ending:
        deadline = self.world.time + timeout
        while True:
            if self.goal_reached():
                return "goal"
            velocity = command()
            if velocity is None:
                return "done"
            if self.world.time >= deadline:
                logger.info("motion timed out after %.1f s", timeout)
                return "timeout"
            event = self._tick(velocity, report)
            if event is not None:
                return event

    def _tick(self, velocity: tuple[float, float, float], report: MotionReport) -> Ending | None:
        self.world.tick(velocity)
        self.on_tick()
        if self.world.has_fallen():
            return "fall"
        touched = self.world.collisions()
        if touched:
            report.touched = touched
            return "collision"
        return None
