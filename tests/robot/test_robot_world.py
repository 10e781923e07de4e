"""The simulated Go2 on real physics (MuJoCo) and its real ONNX walking policy: it walks and
turns on command, the controller carries out actions, episodes end as they should, invalid
replies are re-asked a bounded number of times, and the video shows the robot."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field

os.environ.setdefault("MUJOCO_GL", "osmesa")  # before mujoco is imported

import pytest

from edgespec.robot.actions import Stop, Turn, Walk
from edgespec.robot.controller import Controller
from edgespec.robot.decision import Decision
from edgespec.robot.episode import Episode, EpisodeConfig, goal_from_task
from edgespec.robot.world import Go2World


@pytest.fixture(scope="module")
def world() -> Go2World:
    return Go2World()


@dataclass
class ScriptedDecider:
    """Replies from a list, in order (the last one repeats): the model stood in for, so these
    tests are about physics and the loop, not about what a model says."""

    replies: list[str]
    asked: list[list[dict]] = field(default_factory=list)

    def decide(self, messages: list[dict], schema: dict | None = None) -> Decision:
        self.asked.append(messages)
        reply = self.replies[min(len(self.asked) - 1, len(self.replies) - 1)]
        return Decision(reply, [], 0, 0.01, 0.005)


class GoalSeeker:
    """Reads the goal's bearing and distance from the observation text, as a model should."""

    def __init__(self, goal: str) -> None:
        self.goal = goal

    def decide(self, messages: list[dict], schema: dict | None = None) -> Decision:
        text = messages[-1]["content"]
        line = next((line for line in text.splitlines() if line.startswith(f"- {self.goal}: ")), None)
        assert line, text
        # The action the observation offers for the goal: face it, or walk to it when ahead.
        reply = json.loads(line[line.index("{") : line.rindex("}") + 1])
        if reply["action"] == "walk":
            distance = float(re.search(r": ([\d.]+) m away", line).group(1))
            reply["metres"] = round(min(3.0, max(0.1, distance - 0.3)), 1)
        return Decision(json.dumps(reply), [], 0, 0.01, 0.005)


def test_policy_walks_forward_and_turns(world: Go2World) -> None:
    world.reset()
    start = world.position()
    for _ in range(200):  # 4 s at 0.5 m/s
        world.tick((0.5, 0.0, 0.0))
    moved = world.position() - start
    assert 1.3 < moved[0] < 2.3, moved  # ramp-up included; measured here 2.1 m
    assert abs(moved[1]) < 0.3
    assert not world.has_fallen()
    heading = world.heading()
    for _ in range(100):  # 2 s at 1 rad/s, counter-clockwise
        world.tick((0.0, 0.0, 1.0))
    turned = math.degrees(math.atan2(math.sin(world.heading() - heading), math.cos(world.heading() - heading)))
    assert 70 < turned < 140, turned
    assert not world.has_fallen()


def test_controller_turns_and_walks_by_the_amount_asked(world: Go2World) -> None:
    world.reset()
    controller = Controller(world)
    report = controller.execute(Turn(-90.0))
    assert report.ended == "done" and abs(report.turned_deg + 90) < 10, report
    report = controller.execute(Walk(1.0))
    assert report.ended == "done" and 0.85 < report.walked_m < 1.15, report
    assert abs(report.turned_deg) < 10
    report = controller.execute(Stop())
    assert report.ended == "done" and abs(report.walked_m) < 0.1


def test_goal_seeker_reaches_each_object(world: Go2World) -> None:
    for task, goal in (
        ("walk to the red box", "red box"),
        ("go to the blue ball", "blue ball"),
        ("walk to the green cone", "green cone"),
    ):
        result = Episode(world, GoalSeeker(goal), EpisodeConfig(task, max_steps=8)).run()
        assert result.outcome == "success", (task, result.outcome, [d.action for d in result.decisions])
        assert result.final_distance_m <= 0.6
        assert result.motion_s > 1.0


def test_walking_into_an_object_ends_the_episode_as_a_collision(world: Go2World) -> None:
    # Face the red box (bearing +28 from the start) and walk through it on the way to the ball.
    decider = ScriptedDecider(['{"action": "turn", "degrees": 28}', '{"action": "walk", "metres": 3}'])
    result = Episode(world, decider, EpisodeConfig("walk to the blue ball", max_steps=5)).run()
    assert result.outcome == "collision"
    assert result.decisions[-1].motion["touched"] == ["arena/red_box"]


def test_a_walk_into_the_wall_is_refused_and_reasked(world: Go2World) -> None:
    decider = ScriptedDecider(['{"action": "walk", "metres": 3}'])
    result = Episode(world, decider, EpisodeConfig("walk to the blue ball", max_steps=3, max_reasks=1)).run()
    # The first walk fits (the east wall is 3.9 m ahead); the next would hit it and is refused.
    assert (
        result.decisions[0].action == {"action": "walk", "metres": 3.0}
        and result.decisions[0].motion["ended"] == "done"
    )
    refused = result.decisions[1:]
    assert refused and all(d.action is None and "would hit it: walk at most" in d.error for d in refused)
    assert result.outcome == "step-limit"


def test_invalid_replies_are_reasked_boundedly_and_never_crash(
    world: Go2World, caplog: pytest.LogCaptureFixture
) -> None:
    decider = ScriptedDecider(
        [
            "I think I should go left.",
            '{"action": "turn", "degrees": 400}',
            '{"action": "turn", "degrees": 20}',
            "nonsense",
        ]
    )
    with caplog.at_level(logging.WARNING, logger="edgespec.robot.episode"):
        result = Episode(world, decider, EpisodeConfig("walk to the red box", max_steps=3, max_reasks=2)).run()
    # step 1: two invalid replies, then a valid turn; steps 2 and 3: three invalid asks each.
    assert [(d.step, d.attempt, d.action is not None) for d in result.decisions] == [
        (1, 0, False),
        (1, 1, False),
        (1, 2, True),
        (2, 0, False),
        (2, 1, False),
        (2, 2, False),
        (3, 0, False),
        (3, 1, False),
        (3, 2, False),
    ]
    assert result.outcome == "step-limit" and len(decider.asked) == 9
    assert "no JSON object" in result.decisions[0].error and "within -180..180" in result.decisions[1].error
    # A re-ask shows the model its reply and why it was refused.
    reask = decider.asked[1]
    assert reask[-2] == {"role": "assistant", "content": "I think I should go left."}
    assert "not a valid action: no JSON object" in reask[-1]["content"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("invalid action (no JSON object in the reply)" in m and "asking again (1 of 2)" in m for m in messages)
    assert any("no valid action after 2 re-ask(s)" in m for m in messages)


def test_same_decisions_give_the_same_trajectory(world: Go2World) -> None:
    replies = [
        '{"action": "turn", "degrees": 30}',
        '{"action": "walk", "metres": 1.2}',
        '{"action": "turn", "degrees": -60}',
        '{"action": "walk", "metres": 0.5}',
    ]
    runs = [
        Episode(world, ScriptedDecider(replies), EpisodeConfig("walk to the red box", max_steps=4)).run()
        for _ in range(2)
    ]
    assert [d.pose_after for d in runs[0].decisions] == [d.pose_after for d in runs[1].decisions]
    assert runs[0].decisions[-1].pose_after != runs[0].decisions[0].pose_after


def test_task_names_its_goal(world: Go2World) -> None:
    assert goal_from_task("Walk to the chair", world.arena).name == "red box"
    assert goal_from_task("find the ball", world.arena).name == "blue ball"
    with pytest.raises(ValueError, match="names no object"):
        goal_from_task("dance", world.arena)


def test_video_shows_the_robot_with_the_latency(world: Go2World, tmp_path) -> None:
    import imageio.v3 as iio

    from edgespec.robot.video import VideoRecorder

    path = tmp_path / "episode.mp4"
    with VideoRecorder(world, path, fps=5, width=192, height=144, title="test") as recorder:
        Episode(
            world,
            ScriptedDecider(['{"action": "turn", "degrees": 20}', '{"action": "stop"}']),
            EpisodeConfig("walk to the red box", max_steps=2),
            recorder,
        ).run()
    assert recorder.frames >= 5
    frames = iio.imread(path)
    assert frames.shape[1:] == (144, 192, 3) and len(frames) == recorder.frames
    frame = frames[-1].astype(float)
    # The banner (dark, with text) on top; below it the scene, and in the middle of it the robot
    # (its light body against the darker floor).
    assert frame[:40].mean() < 60
    centre = frame[60:120, 64:128]
    assert centre.max() > 180 and frame[44:].std() > 15
