"""Summaries of a benchmark's records: per profile and mode (speedups against cloud-ar, the
self-consistency and oracle checks, the serving figures of concurrent clients) and, for a client
sweep, every point plus the capacity table. Apart from `runner`, which only runs the processes
and collects their records, so the summaries can be recomputed from saved records."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from edgespec.bench.metrics import differences_from_cloud_ar, summarize
from edgespec.bench.report import LLAMACPP_DTYPE
from edgespec.bench.runner import BenchConfig, core_layout, served_engine
from edgespec.capacity import point_metrics
from edgespec.core.modes import Mode
from edgespec.models.loading import resolve_dtype


def aggregate_tokens_per_s(records: list[dict[str, Any]]) -> float:
    """Every client's tokens over the wall time from the first start to the last finish."""
    timed = [r for r in records if "started_at" in r and "tokens" in r]
    if not timed:
        return 0.0
    wall = max(r["ended_at"] for r in timed) - min(r["started_at"] for r in timed)
    return sum(len(r["tokens"]) for r in timed) / wall if wall > 0 else 0.0


def _at(differing: list[tuple[str, int]]) -> list[str]:
    return [f"{prompt_id}@{position}" for prompt_id, position in differing]


def summarize_all(
    config: BenchConfig,
    records: list[dict[str, Any]],
    oracle: dict[tuple[str, str], list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """``oracle``: what `--check-oracle` found, (profile, mode) -> the outputs that differ from
    fp32 `generate`, each with its first differing position and the fp32 top-two margin there."""
    self_consistency = differences_from_cloud_ar(records)
    profiles: dict[str, dict[str, Any]] = {}
    for profile in config.profiles:
        per_mode: dict[str, Any] = {}
        for mode in config.modes:
            name = Mode.parse(mode).value
            chosen = [r for r in records if r["profile"] == profile and r["mode"] == name]
            summary = summarize(chosen, profile, config.price)
            summary["errors"] = sum(1 for r in chosen if "error" in r)
            summary["engine"] = served_engine(config)
            if name not in ("cloud-ar", "edge-only"):
                differing = self_consistency.get((profile, name), [])
                summary["differs_from_cloud_ar"] = len(differing)
                summary["differs_from_cloud_ar_at"] = _at(differing)
            if oracle is not None:
                found = oracle.get((profile, name), [])
                summary["oracle_mismatches"] = len(found)
                summary["oracle_mismatch_at"] = [
                    f"{d['prompt_id']}@{d['position']} (fp32 margin {d['fp32_margin']:.3f})" for d in found
                ]
            if config.clients > 1:
                summary["clients"] = config.clients
                summary["aggregate_tokens_per_s"] = aggregate_tokens_per_s(chosen)
                # The serving figures (decode tokens/s, per-client p10, TTFT percentiles, the
                # verifier's busy time counted once per batched pass): see edgespec.capacity.
                summary.update(
                    {k: v for k, v in point_metrics(chosen).items() if k not in ("clients", "aggregate_tokens_per_s")}
                )
            per_mode[name] = summary
        # With concurrent clients the server's throughput is what is compared: aggregate tokens/s.
        rate = "aggregate_tokens_per_s" if config.clients > 1 else "tokens_per_s"
        baseline = per_mode.get("cloud-ar", {}).get(rate) or 0.0
        for summary in per_mode.values():
            summary["speedup_vs_cloud_ar"] = summary.get(rate, 0.0) / baseline if baseline else 0.0
        profiles[profile] = per_mode
    return {
        "config": asdict(config),
        "server_dtype": LLAMACPP_DTYPE if served_engine(config) == "llamacpp" else resolve_dtype(config.dtype),
        "profiles": profiles,
        "cores": core_layout(config.clients),
    }


def sweep_points(config: BenchConfig, records: list[dict[str, Any]], profile: str) -> dict[int, dict[str, Any]]:
    """clients -> mode -> the serving figures of that point (`edgespec.capacity.point_metrics`)."""
    return {
        count: {
            Mode.parse(mode).value: point_metrics(
                [
                    r
                    for r in records
                    if r["profile"] == profile
                    and r.get("sweep_clients") == count
                    and r["mode"] == Mode.parse(mode).value
                ]
            )
            for mode in config.modes
        }
        for count in config.counts
    }


def summarize_sweep(
    config: BenchConfig, records: list[dict[str, Any]], oracle_by_count: dict[int, Any] | None = None
) -> dict[str, Any]:
    """A sweep's summary: the largest point in the single-count shape at the top (what
    `--clients N` alone writes), every point in that shape under ``sweep``, and per profile the
    capacity table."""
    from edgespec.capacity import capacity_table, default_slo

    oracle_by_count = oracle_by_count or {}
    points = {
        count: summarize_all(
            config.at(count), [r for r in records if r.get("sweep_clients") == count], oracle_by_count.get(count)
        )
        for count in config.counts
    }
    summary = dict(points[config.clients])
    summary["config"] = asdict(config)
    summary["sweep"] = {str(count): point for count, point in points.items()}
    summary["capacity"] = {}
    for profile in config.profiles:
        figures = sweep_points(config, records, profile)
        if config.slo_tokens_per_s is not None:
            slo, source = config.slo_tokens_per_s, "--slo-tokens-per-s"
        else:
            slo, source = default_slo(figures), "half of single-client cloud-ar, measured in this sweep"
        summary["capacity"][profile] = {
            "slo_source": source,
            "points": {str(n): f for n, f in figures.items()},
            **capacity_table(figures, slo),
        }
    return summary
