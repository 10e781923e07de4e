"""The fastest `cloud-ar` this host can run for the target, as a row of its own in the report.

A benchmark's `vs cloud-ar` compares modes with `cloud-ar` on the same engine as the verifier
(like with like). A user's alternative is whatever serves the target fastest here: for a GGUF
target on a CPU, llama.cpp. This runs the same prompts' `cloud-ar` once more on a server with
`--engine llamacpp` and adds it as "cloud-ar (fastest here)", with every mode's ratio against it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from edgespec.bench.metrics import summarize
from edgespec.bench.runner import BenchConfig, run_profile
from edgespec.bench.summary import aggregate_tokens_per_s
from edgespec.capacity import point_metrics

FASTEST_ROW = "cloud-ar (fastest here)"


def fastest_config(config: BenchConfig) -> BenchConfig:
    """``config`` as a cloud-ar-only run on llama.cpp (no exits, no server draft)."""
    return replace(
        config, engine="llamacpp", exits="none", modes=("cloud-ar",), out=str(Path(config.out) / "fastest-cloud-ar")
    )


def run_fastest_cloud_ar(
    config: BenchConfig, profile: str, jobs: list[dict[str, Any]], progress: Callable[[int], None]
) -> list[dict[str, Any]]:
    """The prompts' cloud-ar on a llama.cpp server of their own (a fresh deployment)."""
    fast = fastest_config(config)
    out = Path(fast.out)
    out.mkdir(parents=True, exist_ok=True)
    records = run_profile(fast, profile, [j for j in jobs if j["mode"] == "cloud-ar"], out, progress)
    return [dict(record, fastest_baseline=True) for record in records]


def add_fastest_rows(summary: dict[str, Any], config: BenchConfig, records: list[dict[str, Any]]) -> None:
    """Add the fastest cloud-ar's row to each profile's table, and each mode's ratio against it."""
    rate = "aggregate_tokens_per_s" if config.clients > 1 else "tokens_per_s"
    for profile, modes in summary["profiles"].items():
        chosen = [r for r in records if r["profile"] == profile]
        row = summarize(chosen, profile, config.price)
        row["engine"] = "llamacpp"
        row["errors"] = sum(1 for r in chosen if "error" in r)
        if config.clients > 1:
            row["clients"] = config.clients
            row["aggregate_tokens_per_s"] = aggregate_tokens_per_s(chosen)
            row.update(
                {k: v for k, v in point_metrics(chosen).items() if k not in ("clients", "aggregate_tokens_per_s")}
            )
        fastest = row.get(rate) or 0.0
        for stats in modes.values():
            stats["speedup_vs_fastest_cloud_ar"] = stats.get(rate, 0.0) / fastest if fastest else 0.0
        row["speedup_vs_fastest_cloud_ar"] = 1.0 if fastest else 0.0
        base = modes.get("cloud-ar", {}).get(rate) or 0.0
        row["speedup_vs_cloud_ar"] = fastest / base if base else 0.0
        modes[FASTEST_ROW] = row
