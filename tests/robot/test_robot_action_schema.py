"""The robot decides through its action schema: every reply the schema admits is a valid action
(so nothing is re-asked), and the decisions are the target's own greedy decoding under the
schema's mask, in every mode, in process and over gRPC.

The decisions come from a tiny random target with a tokenizer that spells JSON character by
character (tests/support/json_tokenizer.py): free, its replies are never an action (the baseline
below re-asks); held to the schema, they always are."""

from __future__ import annotations

import json
import math
import os
from functools import lru_cache
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "osmesa")

import pytest

from edgespec.core.config import GenerationConfig
from edgespec.core.grammar import Grammar
from edgespec.core.modes import Mode
from edgespec.decoding.grammar import GrammarError, GrammarMatcher, tokenizer_fingerprint
from edgespec.exits.heads import ExitHeads, ExitSpec
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from edgespec.prompting import render_prompt
from edgespec.robot.actions import COMPACT, ActionError, action_schema, check_feasible, parse_action, walk_limit
from edgespec.robot.decision import Decision, ModelDecider, local_generate, remote_generate
from edgespec.robot.episode import Episode, EpisodeConfig, EpisodeResult
from edgespec.robot.world import Go2World
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.servicer import VerifierService
from tests.support.grammar_oracle import masked_generate
from tests.support.json_tokenizer import json_tokenizer
from tests.support.tiny_models import layer_skip_copy, tiny_model

TASK = "walk to the red box"
NEW_TOKENS = 48  # the longest action the schema admits is 36 characters, then EOS
CONTEXT = 16384  # the robot's prompts spelled character by character


@lru_cache(maxsize=None)
def tokenizer():  # type: ignore[no-untyped-def]
    return json_tokenizer()


EOS = tokenizer().eos_token_id
CONFIG = GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=3, eos_ids=frozenset({EOS}))


def long_context(model):  # type: ignore[no-untyped-def]
    """Rotary positions are computed per forward, so the window is only the config's number."""
    model.config.max_position_embeddings = CONTEXT
    return model


def target():  # type: ignore[no-untyped-def]
    return long_context(tiny_model("qwen2", seed=0))


def draft() -> DraftRuntime:
    return DraftRuntime(long_context(layer_skip_copy(tiny_model("qwen2", seed=0), keep=3)))


def exits() -> ExitHeads:
    return ExitHeads([ExitSpec(2), ExitSpec(3)], 64)


# ------------------------------------------------------------------ the schema admits only valid actions


def schema_admits(text: str, compiled: GrammarMatcher) -> bool:
    matcher = compiled.copy()
    try:
        matcher.advance(tokenizer().encode(text))
    except GrammarError:
        return False
    return bool(matcher.mask()[EOS])


def is_valid(text: str, wall_ahead_m: float | None) -> bool:
    try:
        check_feasible(parse_action(text), math.inf if wall_ahead_m is None else wall_ahead_m)
    except ActionError:
        return False
    return True


def candidates(separators: tuple[str, str]) -> list[str]:
    """Replies near the schema's edges: every whole degree and more, walks in steps of 5 cm past
    both ends, numbers spelled oddly, unknown actions and keys."""
    item, key = separators

    def action(kind: str, **arguments: str) -> str:
        fields = [f'"action"{key}"{kind}"', *(f'"{name}"{key}{value}' for name, value in arguments.items())]
        return "{" + item.join(fields) + "}"

    texts = [action("turn", degrees=str(d)) for d in range(-200, 201)]
    texts += [action("turn", degrees=d) for d in ("12.5", "-0", "90.0", "1e2", '"left"', "true")]
    texts += [action("walk", metres=f"{m / 100:g}") for m in range(-50, 355, 5)]
    texts += [action("walk", metres=m) for m in ("0", "0.0", "3.0", "2.60", "1e0", "0.25", '"far"')]
    texts += [action("stop"), action("fly"), action("turn"), action("walk"), action("stop", degrees="3")]
    texts += ['{"degrees": 30, "action": "turn"}', '{"action": "stop"} ', "stop", "{}"]
    return texts


@pytest.mark.parametrize("wall_ahead_m", [None, 2.05, 1.0, 0.45], ids=lambda w: f"wall-{w}")
@pytest.mark.parametrize("separators", [(", ", ": "), COMPACT], ids=["spaced", "compact"])
def test_every_reply_the_schema_admits_is_a_valid_feasible_action(
    wall_ahead_m: float | None, separators: tuple[str, str]
) -> None:
    grammar = Grammar("json_schema", json.dumps(action_schema(wall_ahead_m, separators)), "")
    compiled = GrammarMatcher(grammar, tokenizer(), len(tokenizer()), [EOS])
    admitted = [text for text in candidates(separators) if schema_admits(text, compiled)]
    assert all(is_valid(text, wall_ahead_m) for text in admitted), [
        t for t in admitted if not is_valid(t, wall_ahead_m)
    ]
    # ... and at the robot's resolution it leaves out no valid action: every whole degree, every
    # tenth of a metre the wall allows, and stop (other spellings of those, "-0", "3.0", are valid too).
    item, key = separators
    turns = {f'{{"action"{key}"turn"{item}"degrees"{key}{d}}}' for d in range(-180, 181)}
    longest = walk_limit(wall_ahead_m)
    walks = {f'{{"action"{key}"walk"{item}"metres"{key}{m / 10:g}}}' for m in range(1, round(longest * 10) + 1)}
    assert turns | walks | {f'{{"action"{key}"stop"}}'} <= set(admitted)


def test_the_walk_limit_leaves_the_wall_margin() -> None:
    assert walk_limit(None) == 3.0 and walk_limit(10.0) == 3.0
    assert walk_limit(2.05) == 1.6 and walk_limit(1.0) == 0.6
    assert walk_limit(0.45) == 0.0 and walk_limit(0.0) == 0.0
    assert "walk" not in json.dumps(action_schema(0.45))


# ------------------------------------------------------------------ episodes through the schema


class Recording:
    """Passes decisions through and keeps each prompt and schema, for the oracle check."""

    def __init__(self, inner: ModelDecider) -> None:
        self.inner = inner
        self.asked: list[tuple[list[int], dict | None]] = []

    def decide(self, messages: list[dict], schema: dict | None = None) -> Decision:
        self.asked.append((render_prompt(self.inner.tokenizer, messages), schema))
        return self.inner.decide(messages, schema)


def episode(world: Go2World, generate, mode: Mode, constrained: bool = True) -> tuple[EpisodeResult, Recording]:  # type: ignore[no-untyped-def]
    decider = Recording(ModelDecider(generate, tokenizer(), mode, CONFIG))
    config = EpisodeConfig(TASK, max_steps=3, max_reasks=0 if not constrained else 2, action_schema=constrained)
    return Episode(world, decider, config).run(), decider


def fingerprint(result: EpisodeResult) -> list[tuple]:
    return [(d.step, d.attempt, d.tokens, d.reply, d.action, d.error, d.motion, d.pose_after) for d in result.decisions]


@pytest.fixture(scope="module")
def world() -> Go2World:
    return Go2World()


@pytest.fixture(scope="module")
def in_process(world: Go2World) -> dict[Mode, tuple[EpisodeResult, Recording]]:
    generate = local_generate(target(), draft(), exits(), tokenizer=tokenizer())
    return {mode: episode(world, generate, mode) for mode in (Mode.CLOUD_AR, Mode.SD, Mode.SD_EE_PIPELINED)}


def test_every_decision_is_a_valid_action_with_no_reask(in_process) -> None:
    for mode, (result, _) in in_process.items():
        assert result.decisions, mode
        for decision in result.decisions:
            assert decision.attempt == 0 and decision.error is None and decision.action is not None, (mode, decision)
            assert decision.tokens[-1] == EOS  # the reply ended where the schema does
        assert any(d.action["action"] in ("turn", "walk") for d in result.decisions), mode  # the robot moved


def test_greedy_decisions_are_the_targets_own_masked_decoding(in_process) -> None:
    for mode, (result, recording) in in_process.items():
        assert len(recording.asked) == len(result.decisions)
        for (prompt, schema), decision in zip(recording.asked, result.decisions):
            grammar = Grammar("json_schema", json.dumps(schema), tokenizer_fingerprint(tokenizer()))
            assert decision.tokens == masked_generate(target(), tokenizer(), grammar, prompt, NEW_TOKENS, EOS), mode


def test_every_mode_in_process_decides_the_same_episode(in_process) -> None:
    reference = fingerprint(in_process[Mode.CLOUD_AR][0])
    for mode in (Mode.SD, Mode.SD_EE_PIPELINED):
        assert fingerprint(in_process[mode][0]) == reference, mode
        assert in_process[mode][0].decisions[0].stats["edge_mask_s"] > 0


def test_the_same_model_without_the_schema_gives_invalid_replies(world: Go2World) -> None:
    """The baseline the schema replaces: free text from the same target is re-asked."""
    result, _ = episode(world, local_generate(target(), draft(), tokenizer=tokenizer()), Mode.SD, constrained=False)
    assert result.decisions[0].error is not None


@pytest.fixture(scope="module")
def served():
    service = VerifierService(TargetRuntime(target(), exits()), tokenizer=tokenizer(), eos_ids=frozenset({EOS}))
    server = RunningServer(service, ServerConfig(port=0))
    yield f"127.0.0.1:{server.port}"
    server.stop()


def test_every_mode_over_grpc_decides_as_in_process(world: Go2World, served: str, in_process) -> None:
    reference = fingerprint(in_process[Mode.CLOUD_AR][0])
    generate = remote_generate(served, draft(), tokenizer=tokenizer())
    for mode in (Mode.CLOUD_AR, Mode.SD, Mode.SD_EE_PIPELINED):
        result, _ = episode(world, generate, mode)
        assert fingerprint(result) == reference, mode


def test_the_robot_command_decides_through_the_schema_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgespec.cli import build_parser, main

    parser = build_parser()
    assert parser.parse_args(["robot", "--local"]).action_schema is True
    assert parser.parse_args(["robot", "--local", "--no-action-schema"]).action_schema is False
    # The draft alone has no target to hold to the schema: refused before any model loads.
    assert main(["robot", "--local", "--mode", "edge-only", "--no-video", "--out", str(tmp_path)]) == 2
    assert "add --no-action-schema" in capsys.readouterr().err
