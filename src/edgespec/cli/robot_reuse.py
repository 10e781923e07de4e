"""`edgespec robot-reuse`: context reuse across a robot's decisions, each decision asked with the
whole prompt and with reused caches (``edgespec.robot.reuse_measurement``). Prints one JSON line
per decision and per episode, and a summary line.

    # over gRPC: `edgespec serve --prefix-cache-tokens` (core 0) and a --profile link, this process as the edge
    edgespec robot-reuse --where server --profile wan --mode sd --dtype bfloat16 --steps 4
    # in process (LocalEngine): target and draft keep their caches
    edgespec robot-reuse --where local --mode sd --dtype bfloat16 --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

DEFAULT_TASKS = "walk to the red box,go to the blue ball,go to the green cone"


def add_robot_reuse_parser(commands: Any) -> None:
    """Register `robot-reuse` on the top-level subparsers."""
    parser = commands.add_parser(
        "robot-reuse",
        help="measure context reuse across a robot's decisions: TTFT with the whole prompt vs reused caches",
        description="Time to first token of each robot decision with the whole prompt against reused caches "
        "(the server's prefix store and the kept draft cache).",
    )
    parser.add_argument("--where", choices=["server", "local"], default="server")
    parser.add_argument("--target", default="qwen2.5-coder-1.5b")
    parser.add_argument("--draft", default="qwen2.5-coder-0.5b")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--mode", default="sd")
    parser.add_argument("--profile", default="wan", help="--where server: the emulated link ('' for none)")
    parser.add_argument("--steps", type=int, default=4, help="step limit of each episode")
    parser.add_argument(
        "--tasks",
        default=DEFAULT_TASKS,
        help="episodes one after another (each its own conversation; they share the system prompt's rules)",
    )
    parser.add_argument("--prefix-cache-tokens", type=int, default=16384)
    parser.set_defaults(handler=run_robot_reuse)


@dataclass
class _Generators:
    """The two ways one decision is generated -- whole prompt (cold) and reused context (warm) --
    the stop tokens, how many prompt tokens the warm one found cached, and the processes to stop."""

    cold: Callable[..., Any]
    warm: Callable[..., Any]
    eos: frozenset[int]
    cached: Callable[[], int]
    processes: list[subprocess.Popen[bytes]]


def _local_generators(args: argparse.Namespace, draft_model: Any) -> _Generators:
    from edgespec.models.draft import DraftRuntime
    from edgespec.models.loading import load_model
    from edgespec.prompting import eos_token_ids
    from edgespec.robot.decision import local_generate

    target = load_model(args.target, args.dtype)
    warm = local_generate(target.model, DraftRuntime(draft_model), reuse_context=True)
    return _Generators(
        cold=local_generate(target.model, DraftRuntime(draft_model)),
        warm=warm,
        eos=eos_token_ids(target.model, target.tokenizer),
        cached=lambda: int(warm.last_reused),  # type: ignore[attr-defined]
        processes=[],
    )


def _server_generators(args: argparse.Namespace, draft_model: Any, tokenizer: Any, log_dir: Path) -> _Generators:
    from edgespec.client.edge_client import ClientOptions
    from edgespec.client.recovery import RecoveryPolicy
    from edgespec.core.config import GenerationConfig
    from edgespec.core.modes import Mode
    from edgespec.models.draft import DraftRuntime
    from edgespec.prompting import eos_token_ids
    from edgespec.robot.decision import remote_generate
    from edgespec.robot.reuse_measurement import last_session_cached_tokens, start_prefix_cache_server
    from edgespec.transport.security import ClientSecurity

    processes, address, server_log = start_prefix_cache_server(
        args.target, args.dtype, args.prefix_cache_tokens, args.profile, log_dir
    )
    recovery = RecoveryPolicy(fallback=False)
    # Whole prompt: a tenant of its own for every decision (the server has nothing cached for
    # it) and a draft reset before each generation, as without reuse.
    cold_client_draft = DraftRuntime(draft_model)

    def cold(prompt_ids: Any, mode: Mode, config: GenerationConfig) -> Any:
        fresh = ClientOptions(recovery=recovery, security=ClientSecurity(token=f"cold-{secrets.token_hex(8)}"))
        return remote_generate(address, cold_client_draft, fresh)(prompt_ids, mode, config)

    warm_options = ClientOptions(recovery=recovery, security=ClientSecurity(token=f"warm-{secrets.token_hex(8)}"))
    return _Generators(
        cold=cold,
        warm=remote_generate(address, DraftRuntime(draft_model), warm_options, reuse_context=True),
        eos=eos_token_ids(draft_model, tokenizer),
        # The last session the server opened is the warm one.
        cached=lambda: last_session_cached_tokens(server_log),
        processes=processes,
    )


def run_robot_reuse(args: argparse.Namespace) -> int:
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    import torch

    from edgespec.core.config import GenerationConfig
    from edgespec.core.modes import Mode
    from edgespec.hostinfo import host_facts
    from edgespec.models.loading import load_draft
    from edgespec.robot.decision import ModelDecider
    from edgespec.robot.episode import Episode, EpisodeConfig
    from edgespec.robot.reuse_measurement import PairedDecider, reuse_summary
    from edgespec.robot.world import Go2World

    torch.set_num_threads(1)
    mode = Mode.parse(args.mode)
    world = Go2World()
    draft_runtime, tokenizer = load_draft(args.draft, "transformers", args.dtype, threads=1)
    draft_model = draft_runtime.model
    generators: _Generators | None = None
    try:
        if args.where == "local":
            generators = _local_generators(args, draft_model)
        else:
            generators = _server_generators(args, draft_model, tokenizer, Path(tempfile.mkdtemp(prefix="robot-reuse-")))
        config = GenerationConfig(max_new_tokens=32, gamma=4, eos_ids=generators.eos)
        decider = PairedDecider(
            ModelDecider(generators.cold, tokenizer, mode, config),
            ModelDecider(generators.warm, tokenizer, mode, config),
            generators.cached,
            on_row=lambda row: print(json.dumps(row), flush=True),
        )
        outcomes = {}
        for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
            # Free text, as these measurements were taken: the schema is `edgespec robot`'s concern.
            result = Episode(world, decider, EpisodeConfig(task, max_steps=args.steps, action_schema=False)).run()
            outcomes[task] = f"{result.outcome} in {result.steps} steps"
            print(json.dumps({"task": task, "outcome": result.outcome, "steps": result.steps}), flush=True)
    finally:
        for process in generators.processes if generators else []:
            process.terminate()
            process.wait(timeout=60)
    measured = reuse_summary(decider.rows)
    summary: dict[str, Any] = {
        "where": args.where,
        "profile": args.profile if args.where == "server" else None,
        "mode": mode.value,
        "dtype": args.dtype,
        "outcomes": outcomes,
        "decisions": measured.pop("decisions"),
        "host": host_facts(),
        "load_average": os.getloadavg(),
        "same_tokens": measured.pop("same_tokens"),
        **measured,
    }
    print(json.dumps(summary), flush=True)
    return 0
