"""One episode: observe, decide (through the model), act, until the goal is reached, the step
limit, a fall or a collision."""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from edgespec.robot.actions import (
    ACTION_FORMAT,
    SPACED,
    Action,
    ActionError,
    Stop,
    action_schema,
    check_feasible,
    parse_action,
)
from edgespec.robot.arena import Arena, ArenaObject
from edgespec.robot.controller import Controller, MotionReport
from edgespec.robot.decision import Decision, DecisionSource
from edgespec.robot.observation import Conversation, observe, wall_ahead
from edgespec.robot.world import Go2World

logger = logging.getLogger(__name__)

Outcome = Literal["success", "step-limit", "fall", "collision", "stopped-short"]
ALIASES = {"chair": "red box", "box": "red box", "ball": "blue ball", "cone": "green cone"}


def goal_from_task(task: str, arena: Arena) -> ArenaObject:
    """The arena object a task names ("walk to the red box", "go to the chair")."""
    text = task.lower()
    for obj in arena.objects:
        if obj.name in text:
            return obj
    for alias, name in ALIASES.items():
        if re.search(rf"\b{alias}\b", text):
            return arena.find(name)
    raise ValueError(
        f"the task {task!r} names no object in the arena "
        f"({', '.join(o.name for o in arena.objects)}, or: {', '.join(ALIASES)})"
    )


@dataclass(frozen=True)
class EpisodeConfig:
    task: str
    max_steps: int = 12
    success_distance_m: float = 0.6  # trunk centre to the goal's surface
    max_reasks: int = 2  # extra tries after an invalid reply, per step
    history_turns: int = 8  # earlier steps kept in the conversation (the oldest go first)
    # Decide through the action schema (robot/actions.py): the target's reply is held to it, so
    # every reply is a valid action and nothing is re-asked. False: free text, parsed and re-asked
    # when invalid (the baseline).
    action_schema: bool = True
    schema_separators: tuple[str, str] = SPACED  # the JSON layout the schema fixes (item, key)

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.max_reasks < 0:
            raise ValueError(f"max_reasks must be >= 0, got {self.max_reasks}")
        if self.history_turns < 0:
            raise ValueError(f"history_turns must be >= 0, got {self.history_turns}")


@dataclass
class DecisionRecord:
    step: int
    attempt: int  # 0 = first ask, 1.. = re-asks after an invalid reply
    observation: str
    reply: str
    action: dict[str, Any] | None
    error: str | None
    latency_s: float
    ttft_s: float
    prompt_tokens: int
    new_tokens: int
    tokens: list[int]
    stats: dict[str, Any]
    motion: dict[str, Any] | None = None
    pose_after: dict[str, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EpisodeResult:
    task: str
    goal: str
    outcome: Outcome
    steps: int
    decisions: list[DecisionRecord] = field(default_factory=list)
    motion_s: float = 0.0
    decision_s: float = 0.0
    final_distance_m: float = 0.0

    @property
    def success(self) -> bool:
        return self.outcome == "success"

    @property
    def completion_s(self) -> float:
        """Time to the end of the task as the robot lives it: moving plus waiting for decisions."""
        return self.motion_s + self.decision_s

    def actions(self) -> list[dict[str, Any] | None]:
        return [record.action for record in self.decisions]


class Recorder(Protocol):
    def on_tick(self) -> None: ...
    def deciding(self, step: int, seconds: float, label: str) -> None: ...


class Episode:
    def __init__(
        self, world: Go2World, decider: DecisionSource, config: EpisodeConfig, recorder: Recorder | None = None
    ) -> None:
        self.world = world
        self.decider = decider
        self.config = config
        self.recorder = recorder
        self.goal = goal_from_task(config.task, world.arena)
        self.controller = Controller(world, on_tick=recorder.on_tick if recorder else None, goal_reached=self._at_goal)

    def _at_goal(self) -> bool:
        return self.world.relative(self.goal)[0] <= self.config.success_distance_m

    def run(self) -> EpisodeResult:
        world, config = self.world, self.config
        world.reset()
        result = EpisodeResult(config.task, self.goal.name, "step-limit", 0)
        last: tuple[Action, MotionReport] | None = None
        conversation = Conversation(config.task, config.history_turns)
        for step in range(1, config.max_steps + 1):
            result.steps = step
            observation = observe(world, config.task, step, config.max_steps, last)
            action, records, exchange = self._decide(step, observation.text, conversation.messages(observation.text))
            conversation.record(exchange)
            result.decisions.extend(records)
            waited = sum(r.latency_s for r in records)
            result.decision_s += waited
            if self.recorder is not None:
                label = f"decided in {waited * 1000:.0f} ms" + (f" ({len(records)} asks)" if len(records) > 1 else "")
                self.recorder.deciding(step, waited, label)
            if action is None:
                logger.warning(
                    "step %d: no valid action after %d re-ask(s); the robot stands still this step",
                    step,
                    config.max_reasks,
                )
                last = None
                continue
            report = self.controller.execute(action)
            result.motion_s += report.duration_s
            records[-1].motion = report.as_dict()
            records[-1].pose_after = observe(world, config.task, step, config.max_steps, None).pose
            last = (action, report)
            logger.info("step %d: %s -> %s", step, records[-1].action, report.as_dict())
            if report.ended == "fall":
                result.outcome = "fall"
                break
            if report.ended == "collision":
                result.outcome = "collision"
                break
            if self._at_goal():
                result.outcome = "success"
                break
            if isinstance(action, Stop):
                result.outcome = "stopped-short"
                break
        result.final_distance_m = self.world.relative(self.goal)[0]
        return result

    def _schema(self) -> dict[str, Any] | None:
        """The schema this decision's reply is held to (None: free text): walks as long as the
        wall ahead allows, so no reply can fail ``check_feasible`` either."""
        if not self.config.action_schema:
            return None
        return action_schema(wall_ahead(self.world), self.config.schema_separators)

    def _decide(
        self, step: int, observation: str, messages: list[dict[str, Any]]
    ) -> tuple[Action | None, list[DecisionRecord], list[dict[str, Any]]]:
        """The step's action (None: no valid one), its asks, and the step's turns for the
        conversation (the observation, any re-asks, the last reply)."""
        records: list[DecisionRecord] = []
        first = len(messages) - 1
        for attempt in range(self.config.max_reasks + 1):
            decision: Decision = self.decider.decide(messages, self._schema())
            record = DecisionRecord(
                step,
                attempt,
                observation,
                decision.text,
                None,
                None,
                decision.latency_s,
                decision.ttft_s,
                decision.prompt_tokens,
                len(decision.tokens),
                decision.tokens,
                decision.stats,
            )
            records.append(record)
            try:
                action = parse_action(decision.text)
                check_feasible(action, wall_ahead(self.world))
            except ActionError as error:
                record.error = str(error)
                more = attempt < self.config.max_reasks
                logger.warning(
                    "step %d: invalid action (%s) in the reply %r%s",
                    step,
                    error,
                    decision.text[:200],
                    f"; asking again ({attempt + 1} of {self.config.max_reasks})" if more else "",
                )
                messages = [
                    *messages,
                    {"role": "assistant", "content": decision.text},
                    {"role": "user", "content": f"That is not a valid action: {error}.\n{ACTION_FORMAT}"},
                ]
                continue
            record.action = action.as_dict()
            return action, records, [*messages[first:], {"role": "assistant", "content": decision.text}]
        return None, records, [*messages[first:-1]]
