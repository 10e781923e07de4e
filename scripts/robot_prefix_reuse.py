"""Context reuse across a robot's decisions, measured on one episode: every decision is asked
twice, once re-sending the whole prompt (cold caches) and once reusing the caches the previous
decisions left (the server's prefix store and the edge draft's kept cache, or both caches in
process), and the time to the first token, the prompt positions found cached and the tokens of
both are recorded. The episode moves on the reusing decision's action.

    # over gRPC: `edgespec serve --prefix-cache-tokens` (core 0) and a --profile link, this
    # process as the edge (core 1)
    python scripts/robot_prefix_reuse.py --where server --profile wan --mode sd --dtype bfloat16 --steps 4
    # in process (LocalEngine): target and draft keep their caches
    python scripts/robot_prefix_reuse.py --where local --mode sd --dtype bfloat16 --steps 4

Each decision's prompt is one conversation (robot/observation.py: the system prompt, the task,
earlier steps as turns, the new observation last), so a decision shares all but its newest turn
with the previous one, and an episode's first decision shares the system prompt with the last
episode's. Writes one JSON line per decision and per episode, and a summary line, to stdout."""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "osmesa")


class PairedDecider:
    """Asks ``cold`` (the whole prompt) and ``warm`` (reusing caches) the same prompt; acts on
    the warm decision."""

    def __init__(self, cold: Any, warm: Any, cached_of_warm: Any) -> None:
        self.cold, self.warm, self.cached_of_warm = cold, warm, cached_of_warm
        self.rows: list[dict[str, Any]] = []

    def decide(self, messages: list[dict[str, Any]]) -> Any:
        cold = self.cold.decide(messages)
        warm = self.warm.decide(messages)
        row = {
            "decision": len(self.rows) + 1, "prompt_tokens": warm.prompt_tokens, "cached_tokens": self.cached_of_warm(),
            "ttft_whole_s": round(cold.ttft_s, 3), "ttft_reuse_s": round(warm.ttft_s, 3),
            "latency_whole_s": round(cold.latency_s, 3), "latency_reuse_s": round(warm.latency_s, 3),
            "same_tokens": cold.tokens == warm.tokens, "reply": warm.text,
        }
        row["prefilled_tokens"] = row["prompt_tokens"] - row["cached_tokens"]
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        return warm


def start_server(args: argparse.Namespace, log_dir: Path) -> tuple[list[subprocess.Popen], str, Path]:
    from edgespec.bench.processes import edgespec_command, free_port, pin_to_core, wait_for_port

    server_port, log = free_port(), log_dir / "server.log"
    server = subprocess.Popen(
        edgespec_command("--log", "serve", "--target", args.target, "--dtype", args.dtype, "--exits", "none", "--port", str(server_port),
                         "--threads", "1", "--prefix-cache-tokens", str(args.prefix_cache_tokens)),
        stdout=open(log, "w"), stderr=subprocess.STDOUT, preexec_fn=pin_to_core(0),
    )
    processes = [server]
    wait_for_port(server_port, server, 1800, "edgespec serve")
    port = server_port
    if args.profile:
        port = free_port()
        processes.append(subprocess.Popen(
            edgespec_command("link", "--listen", str(port), "--upstream", f"127.0.0.1:{server_port}", "--profile", args.profile),
            stdout=open(log_dir / "link.log", "w"), stderr=subprocess.STDOUT,
        ))
        wait_for_port(port, processes[-1], 60, "edgespec link")
    return processes, f"127.0.0.1:{port}", log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--where", choices=["server", "local"], default="server")
    parser.add_argument("--target", default="qwen2.5-coder-1.5b")
    parser.add_argument("--draft", default="qwen2.5-coder-0.5b")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--mode", default="sd")
    parser.add_argument("--profile", default="wan", help="--where server: the emulated link ('' for none)")
    parser.add_argument("--steps", type=int, default=4, help="step limit of each episode")
    parser.add_argument("--tasks", default="walk to the red box,go to the blue ball,go to the green cone",
                        help="episodes one after another (each its own conversation; they share the system prompt's rules)")
    parser.add_argument("--prefix-cache-tokens", type=int, default=16384)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from edgespec.client.edge_client import ClientOptions
    from edgespec.client.recovery import RecoveryPolicy
    from edgespec.core.config import GenerationConfig
    from edgespec.core.modes import Mode
    from edgespec.hostinfo import host_facts
    from edgespec.models.draft import DraftRuntime
    from edgespec.models.loading import load_draft, load_model
    from edgespec.prompting import eos_token_ids
    from edgespec.robot.decision import ModelDecider, local_generate, remote_generate
    from edgespec.robot.episode import Episode, EpisodeConfig
    from edgespec.robot.world import Go2World
    from edgespec.transport.security import ClientSecurity

    mode = Mode.parse(args.mode)
    world = Go2World()
    draft_runtime, tokenizer = load_draft(args.draft, "transformers", args.dtype, threads=1)
    draft_model = draft_runtime.model
    processes: list[subprocess.Popen] = []
    log_dir = Path(tempfile.mkdtemp(prefix="robot-reuse-"))
    try:
        if args.where == "local":
            target = load_model(args.target, args.dtype)
            cold_generate = local_generate(target.model, DraftRuntime(draft_model))
            warm_generate = local_generate(target.model, DraftRuntime(draft_model), reuse_context=True)
            eos = eos_token_ids(target.model, target.tokenizer)

            def cached() -> int:
                return int(warm_generate.last_reused)
        else:
            processes, address, server_log = start_server(args, log_dir)
            options = ClientOptions(recovery=RecoveryPolicy(fallback=False))
            # Whole prompt: a tenant of its own for every decision (the server has nothing cached
            # for it) and a draft reset before each generation, as without reuse.
            cold_client_draft = DraftRuntime(draft_model)

            def cold_generate(prompt_ids: Any, mode_: Mode, config: GenerationConfig) -> Any:
                fresh = ClientOptions(recovery=options.recovery, security=ClientSecurity(token=f"cold-{secrets.token_hex(8)}"))
                return remote_generate(address, cold_client_draft, fresh)(prompt_ids, mode_, config)

            warm_options = ClientOptions(recovery=options.recovery, security=ClientSecurity(token=f"warm-{secrets.token_hex(8)}"))
            warm_generate = remote_generate(address, DraftRuntime(draft_model), warm_options, reuse_context=True)
            eos = eos_token_ids(draft_model, tokenizer)

            def cached() -> int:
                # The server logs each session's cached positions; the last session is the warm one.
                opened = re.findall(r"opened: \d+ prompt tokens \((\d+) cached\)", server_log.read_text())
                return int(opened[-1]) if opened else -1

        config = GenerationConfig(max_new_tokens=32, gamma=4, eos_ids=eos)
        decider = PairedDecider(ModelDecider(cold_generate, tokenizer, mode, config), ModelDecider(warm_generate, tokenizer, mode, config), cached)
        outcomes = {}
        for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
            result = Episode(world, decider, EpisodeConfig(task, max_steps=args.steps)).run()
            outcomes[task] = f"{result.outcome} in {result.steps} steps"
            print(json.dumps({"task": task, "outcome": result.outcome, "steps": result.steps}), flush=True)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=60)
    later = decider.rows[1:]  # the first decision finds nothing cached, either way
    summary: dict[str, Any] = {
        "where": args.where, "profile": args.profile if args.where == "server" else None, "mode": mode.value, "dtype": args.dtype,
        "outcomes": outcomes, "decisions": len(decider.rows), "host": host_facts(),
        "load_average": os.getloadavg(), "same_tokens": all(r["same_tokens"] for r in decider.rows),
    }
    if later:
        summary.update({
            "later_decisions_ttft_ratio_median": round(statistics.median(r["ttft_whole_s"] / r["ttft_reuse_s"] for r in later), 2),
            "later_decisions_ttft_whole_median_s": statistics.median(r["ttft_whole_s"] for r in later),
            "later_decisions_ttft_reuse_median_s": statistics.median(r["ttft_reuse_s"] for r in later),
            "later_decisions_prompt_tokens_median": statistics.median(r["prompt_tokens"] for r in later),
            "later_decisions_prefilled_tokens_median": statistics.median(r["prefilled_tokens"] for r in later),
        })
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    sys.exit(main())
