"""`edgespec robot --compare`: the same task in each mode, each episode in its own process."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgespec.cli.robot_report import compare_report

logger = logging.getLogger(__name__)

DEFAULT_COMPARE = "cloud-ar,sd,sd-ee-pipelined"
PREFIX_CACHE_TOKENS = 16384  # the server --compare starts with --reuse-context: a whole episode's conversations


def _child_args(args: argparse.Namespace, mode: str, server: str | None, out: Path) -> list[str]:
    child = [
        "robot",
        "--task",
        args.task,
        "--mode",
        mode,
        "--max-steps",
        str(args.max_steps),
        "--max-reasks",
        str(args.max_reasks),
        "--out",
        str(out),
        "--fps",
        str(args.fps),
        "--max-hold",
        str(args.max_hold),
        "--target",
        args.target,
        "--draft",
        args.draft,
        "--draft-backend",
        args.draft_backend,
        "--gamma",
        str(args.gamma),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--dtype",
        args.dtype,
        "--threads",
        str(args.threads or 1),
        "--exits",
        args.exits,
        "--video" if args.video else "--no-video",
        "--action-schema" if args.action_schema else "--no-action-schema",
        "--history-turns",
        str(args.history_turns),
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
    context = (
        deploy(args.target, args.dtype, args.profile, exits=args.exits, log_dir=str(out), serve_args=serve_args)
        if started
        else nullcontext()
    )
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
            completed = subprocess.run(
                command,
                capture_output=True,
                text=True,
                preexec_fn=pin_to_core(1) if started else None,
                env=env,
            )
            (out / f"{mode}.log").write_text(completed.stdout + completed.stderr)
            lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
            if completed.returncode != 0 or not lines:
                raise RuntimeError(
                    f"the {mode} episode failed (exit {completed.returncode}); see {out / f'{mode}.log'}: "
                    f"{completed.stderr.strip()[-1500:]}",
                )
            summary = json.loads(lines[-1])
            summaries.append(summary)
            print(
                f"[{mode}] {summary['outcome']} in {summary['steps']} steps, decision p50 "
                f"{summary['latency_p50_s'] * 1000:.0f} ms",
                file=sys.stderr,
                flush=True,
            )
    link = "in process" if args.local else f"the server at {args.server}"
    if started:
        link = f"a `{args.profile}` link started here"
    report = compare_report(summaries, link)
    (out / "compare.md").write_text(report)
    (out / "compare.json").write_text(json.dumps(summaries, indent=2))
    print(report)
    return 0
