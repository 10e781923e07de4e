"""What `edgespec robot` writes about its episodes: one episode's summary and report, and the
comparison of the modes' episodes."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any, Sequence


def episode_summary(args: argparse.Namespace, mode: str, where: str, result: Any, wall: float) -> dict[str, Any]:
    """One episode's summary.json: its outcome, its decisions' latencies and what it ran."""
    latencies = [r.latency_s for r in result.decisions]
    return {
        "task": result.task,
        "goal": result.goal,
        "mode": mode,
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


def _percentile(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


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
        f"- outcome: **{summary['outcome']}** after {summary['steps']} step(s), {summary['asks']} ask(s), "
        f"{summary['invalid_replies']} invalid repl(ies); final distance to the {summary['goal']}: "
        f"{summary['final_distance_m']:.2f} m",
        f"- decision latency p50 {summary['latency_p50_s'] * 1000:.0f} ms, p90 {summary['latency_p90_s'] * 1000:.0f} "
        f"ms; time to first token p50 {summary['ttft_p50_s'] * 1000:.0f} ms",
        f"- time to completion {summary['completion_s']:.1f} s = motion {summary['motion_s']:.1f} s + waiting for "
        f"decisions {summary['decision_s']:.1f} s",
        "",
        "| step | ask | reply | action | latency | tokens | motion |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in decisions:
        reply = r.reply.replace("|", "\\|").replace("\n", " ")[:80]
        action = json.dumps(r.action) if r.action else f"invalid: {r.error}"
        motion = ""
        if r.motion:
            motion = (
                f"{r.motion['ended']}, {r.motion['duration_s']:.1f} s, walked {r.motion['walked_m']:.2f} m, "
                f"turned {r.motion['turned_deg']:+.0f}°"
            )
        lines.append(
            f"| {r.step} | {r.attempt} | `{reply}` | {action} | {r.latency_s * 1000:.0f} ms | {r.new_tokens} | "
            f"{motion} |",
        )
    return "\n".join(lines) + "\n"


def compare_report(summaries: Sequence[dict[str, Any]], link: str) -> str:
    base = summaries[0]
    cloud = next((s for s in summaries if s["mode"] == "cloud-ar"), None)
    lines = [
        f"# Robot: {base['task']} — every mode ({link})",
        "",
        f"CPU: {base['cpu']}. Decision latency = wall time from the request to the last token of the action.",
        "",
        "| mode | outcome | steps | asks | decision p50 | p90 | vs cloud-ar (p50) | TTFT p50 | motion | waiting "
        "| completion | same actions as " + base["mode"] + " |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        ratio = _ratio(s["latency_p50_s"], cloud and cloud["latency_p50_s"])
        same = "yes" if s["replies"] == base["replies"] and s["actions"] == base["actions"] else "NO"
        lines.append(
            f"| {s['mode']} | {s['outcome']} | {s['steps']} | {s['asks']} | {s['latency_p50_s'] * 1000:.0f} ms | "
            f"{s['latency_p90_s'] * 1000:.0f} ms | {ratio} | {s['ttft_p50_s'] * 1000:.0f} ms | {s['motion_s']:.1f} s "
            f"| {s['decision_s']:.1f} s | {s['completion_s']:.1f} s | {same} |"
        )
    lines += [
        "",
        "The first decision prefills the whole prompt; the later ones (with `--reuse-context`) only what is new. "
        "Apart:",
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
        lines += [
            "",
            "The modes' episodes differ (different actions), so their decisions are not the same questions: "
            "compare per decision (`decisions.jsonl`). In fp32 every mode chooses the same actions (tested); "
            "in bf16 a near-tie can flip.",
        ]
    return "\n".join(lines) + "\n"


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.0f} ms"


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}×" if value is not None and base else "–"
