"""Context reuse across a robot's decisions, measured on real episodes: every decision is asked
twice, once re-sending the whole prompt (cold caches) and once reusing the caches the previous
decisions left (the server's prefix store and the edge draft's kept cache, or both caches in
process); the time to the first token, the prompt positions found cached and both answers'
tokens are recorded, and the episode moves on the reusing decision's action.

Each decision's prompt is one conversation (robot/observation.py), so a decision shares all but
its newest turn with the previous one, and an episode's first decision shares the system prompt
with the last episode's."""

from __future__ import annotations

import logging
import re
import statistics
import subprocess
from pathlib import Path
from typing import Any, Callable

from edgespec.robot.decision import Decision, DecisionSource

logger = logging.getLogger(__name__)

# What `serve` logs when a session opens: its prompt tokens and how many the prefix store held.
_OPENED = re.compile(r"opened: \d+ prompt tokens \((\d+) cached\)")


class PairedDecider:
    """Asks ``cold`` (the whole prompt) and ``warm`` (reusing caches) the same prompt; acts on
    the warm decision. ``cached_of_warm`` says how many prompt positions the warm one found
    cached; ``on_row`` receives each decision's record as it is made."""

    def __init__(
        self,
        cold: DecisionSource,
        warm: DecisionSource,
        cached_of_warm: Callable[[], int],
        on_row: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.cold, self.warm, self.cached_of_warm = cold, warm, cached_of_warm
        self.on_row = on_row
        self.rows: list[dict[str, Any]] = []

    def decide(self, messages: list[dict[str, Any]], schema: dict[str, Any] | None = None) -> Decision:
        cold = self.cold.decide(messages, schema)
        warm = self.warm.decide(messages, schema)
        row = {
            "decision": len(self.rows) + 1,
            "prompt_tokens": warm.prompt_tokens,
            "cached_tokens": self.cached_of_warm(),
            "ttft_whole_s": round(cold.ttft_s, 3),
            "ttft_reuse_s": round(warm.ttft_s, 3),
            "latency_whole_s": round(cold.latency_s, 3),
            "latency_reuse_s": round(warm.latency_s, 3),
            "same_tokens": cold.tokens == warm.tokens,
            "reply": warm.text,
        }
        row["prefilled_tokens"] = row["prompt_tokens"] - row["cached_tokens"]
        self.rows.append(row)
        if self.on_row is not None:
            self.on_row(row)
        return warm


def reuse_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether both ways gave the same tokens throughout, and medians over the decisions after
    the first (which finds nothing cached either way)."""
    summary: dict[str, Any] = {"decisions": len(rows), "same_tokens": all(r["same_tokens"] for r in rows)}
    later = rows[1:]
    if later:
        ratios = [r["ttft_whole_s"] / r["ttft_reuse_s"] for r in later]
        summary.update(
            {
                "later_decisions_ttft_ratio_median": round(statistics.median(ratios), 2),
                "later_decisions_ttft_whole_median_s": statistics.median(r["ttft_whole_s"] for r in later),
                "later_decisions_ttft_reuse_median_s": statistics.median(r["ttft_reuse_s"] for r in later),
                "later_decisions_prompt_tokens_median": statistics.median(r["prompt_tokens"] for r in later),
                "later_decisions_prefilled_tokens_median": statistics.median(r["prefilled_tokens"] for r in later),
            }
        )
    return summary


def last_session_cached_tokens(server_log: Path) -> int:
    """The prompt positions the server's latest session found in its prefix store (-1: none logged)."""
    opened = _OPENED.findall(server_log.read_text())
    return int(opened[-1]) if opened else -1


def start_prefix_cache_server(
    target: str, dtype: str, prefix_cache_tokens: int, profile: str, log_dir: Path
) -> tuple[list[subprocess.Popen[bytes]], str, Path]:
    """`edgespec serve --prefix-cache-tokens` without exits on core 0 (and `edgespec link
    --profile` in front of it unless ``profile`` is empty): the processes, the address a client
    dials, and the server's log (where it reports each session's cached positions)."""
    from edgespec.bench.processes import edgespec_command, free_port, pin_to_core, wait_for_port

    server_port, log = free_port(), log_dir / "server.log"
    serve = edgespec_command(
        "--log",
        "serve",
        "--target",
        target,
        "--dtype",
        dtype,
        "--exits",
        "none",
        "--port",
        str(server_port),
        "--threads",
        "1",
        "--prefix-cache-tokens",
        str(prefix_cache_tokens),
    )
    server = subprocess.Popen(serve, stdout=open(log, "w"), stderr=subprocess.STDOUT, preexec_fn=pin_to_core(0))
    processes = [server]
    wait_for_port(server_port, server, 1800, "edgespec serve")
    port = server_port
    if profile:
        port = free_port()
        upstream = f"127.0.0.1:{server_port}"
        link = edgespec_command("link", "--listen", str(port), "--upstream", upstream, "--profile", profile)
        processes.append(subprocess.Popen(link, stdout=open(log_dir / "link.log", "w"), stderr=subprocess.STDOUT))
        wait_for_port(port, processes[-1], 60, "edgespec link")
    logger.info("prefix-cache server on port %d, clients dial %d", server_port, port)
    return processes, f"127.0.0.1:{port}", log
