"""Capacity: how many clients one verifier serves while each still gets an agreed speed.

One implementation for the measured sweep (`edgespec bench --clients 1,2,4,8`) and the simulated
one (`edgespec simulate --clients 1,8,32`): per point (client count) and mode, the serving
figures from per-generation records; then, per mode, the most clients whose p10 per-client
tokens/s stays at or above an SLO.

A record is one generation in `edgespec bench`'s shape: ``tokens``, ``stats`` (``total_s``,
``ttft_s``, ``new_tokens``, optionally a ``timeline``), ``started_at`` / ``ended_at`` (seconds,
one clock for every client of a point) and ``client_index``.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

SLO_FRACTION_OF_CLOUD_AR = 0.5  # default SLO: half of single-client cloud-ar, measured in the same sweep
CLOUD_TIMELINE_PASSES = ("verify (server)", "decode", "prefill (server)", "draft (server)")


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default): with one client p10 is
    that client's rate, with two it lies a tenth of the way from the slower to the faster."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else 0.0


def union_length(intervals: Iterable[tuple[float, float]]) -> float:
    """Seconds covered by at least one interval (overlaps counted once)."""
    total, end = 0.0, -np.inf
    for start, stop in sorted(i for i in intervals if i[1] > i[0]):
        if start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def _timed(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if "stats" in r and "tokens" in r and "error" not in r]


def per_client_tokens_per_s(records: Iterable[dict[str, Any]]) -> list[float]:
    """Each client's tokens over the time it spent generating (its generations run one after
    another, so a client with several prompts is one rate, not several)."""
    tokens: dict[Any, int] = {}
    seconds: dict[Any, float] = {}
    for r in _timed(records):
        key = r.get("client_index", 0)
        tokens[key] = tokens.get(key, 0) + len(r["tokens"])
        seconds[key] = seconds.get(key, 0.0) + r["stats"]["total_s"]
    return [tokens[k] / seconds[k] for k in sorted(tokens, key=str) if seconds[k] > 0]


def decode_tokens_per_s(records: Iterable[dict[str, Any]]) -> float:
    """The serving split of TTFT and time per output token: every token after each generation's
    first, over the time after that first token during which any client was decoding (the union
    of the decode windows [first token, end]: concurrent clients share the window, clients'
    successive generations add up)."""
    timed = _timed(records)
    windows = [(r["started_at"] + r["stats"]["ttft_s"], r["ended_at"]) for r in timed if len(r["tokens"]) > 1]
    span = union_length(windows)
    return sum(max(0, len(r["tokens"]) - 1) for r in timed) / span if span > 0 else 0.0


def server_busy_s(records: Iterable[dict[str, Any]]) -> float | None:
    """The verifier's busy seconds as the clients saw them: the union of every pass (prefill,
    verify or decode) each session rode in, placed on one clock by its start time. A batched pass
    is reported to each of its sessions and counted once; the same pass seen by two clients
    differs only by its delivery (ms). None when no record carries a timeline."""
    passes = []
    seen = False
    for r in _timed(records):
        timeline = r["stats"].get("timeline")
        if timeline is None:
            continue
        seen = True
        for event in timeline:
            if event["actor"] == "cloud" and event["what"] in CLOUD_TIMELINE_PASSES:
                passes.append((r["started_at"] + event["start_s"], r["started_at"] + event["end_s"]))
    return union_length(passes) if seen else None


def point_metrics(records: Sequence[dict[str, Any]], busy_s: float | None = None) -> dict[str, Any]:
    """One point (client count) of one mode: the serving figures. ``busy_s``: the verifier's
    busy seconds when known exactly (the simulator); otherwise taken from the clients' timelines."""
    timed = _timed(records)
    if not timed:
        return {}
    wall = max(r["ended_at"] for r in timed) - min(r["started_at"] for r in timed)
    tokens = sum(len(r["tokens"]) for r in timed)
    rates = per_client_tokens_per_s(timed)
    ttfts = [1000 * r["stats"]["ttft_s"] for r in timed]
    busy = busy_s if busy_s is not None else server_busy_s(timed)
    figures: dict[str, Any] = {
        "clients": len({r.get("client_index", 0) for r in timed}),
        "aggregate_tokens_per_s": tokens / wall if wall > 0 else 0.0,
        "decode_tokens_per_s": decode_tokens_per_s(timed),
        "per_client_tokens_per_s_median": percentile(rates, 50),
        "per_client_tokens_per_s_p10": percentile(rates, 10),
        "ttft_ms_p50": percentile(ttfts, 50),
        "ttft_ms_p90": percentile(ttfts, 90),
        "target_passes_per_token": sum(r["stats"].get("target_passes", 0) for r in timed) / max(1, tokens),
    }
    if busy is not None:
        figures["server_busy_share"] = busy / wall if wall > 0 else 0.0
        figures["server_s_per_token"] = busy / max(1, tokens)
    return figures


def default_slo(points: Mapping[int, Mapping[str, Mapping[str, Any]]]) -> float:
    """Half of the single-client cloud-ar per-client tokens/s of the same sweep."""
    single = points.get(1, {}).get("cloud-ar", {}).get("per_client_tokens_per_s_median")
    if not single:
        raise ValueError(
            "the default SLO is half of single-client cloud-ar's tokens/s, and this sweep has no N=1 cloud-ar point: "
            "add 1 to --clients and cloud-ar to --modes, or give --slo-tokens-per-s"
        )
    return SLO_FRACTION_OF_CLOUD_AR * float(single)


def capacity(p10_by_clients: Mapping[int, float], slo: float) -> dict[str, Any]:
    """The most clients whose p10 per-client tokens/s stays >= ``slo``: the largest N such that
    every measured point up to N meets it (0 when even the smallest point misses). Points past
    the first miss that meet it again are listed apart (``also_met_at``): noise, or a sweep too
    coarse to trust, never counted as capacity."""
    counts = sorted(p10_by_clients)
    served = 0
    missed = False
    also = []
    for n in counts:
        meets = p10_by_clients[n] >= slo
        if meets and not missed:
            served = n
        elif meets:
            also.append(n)
        else:
            missed = True
    return {"capacity": served, "also_met_at": also, "largest_point": counts[-1] if counts else 0}


def capacity_table(points: Mapping[int, Mapping[str, Mapping[str, Any]]], slo: float) -> dict[str, Any]:
    """Per mode: capacity at ``slo``, and its ratio to cloud-ar's (and cloud-sd's, where run).
    ``points``: clients -> mode -> `point_metrics`."""
    modes: list[str] = []
    for per_mode in points.values():
        modes += [m for m in per_mode if m not in modes]
    table: dict[str, Any] = {}
    for mode in modes:
        p10 = {n: per_mode[mode]["per_client_tokens_per_s_p10"] for n, per_mode in points.items() if per_mode.get(mode)}
        table[mode] = capacity(p10, slo)
    for mode, row in table.items():
        for base in ("cloud-ar", "cloud-sd"):
            if base in table and base != mode:
                row[f"vs_{base}"] = _ratio(row["capacity"], table[base]["capacity"])
    return {"slo_tokens_per_s": slo, "modes": table}


def _ratio(value: int, base: int) -> float | None:
    """None where the baseline serves nobody at the SLO (no finite ratio)."""
    return value / base if base else None


def render_capacity_markdown(
    points: Mapping[int, Mapping[str, Mapping[str, Any]]], table: Mapping[str, Any], slo_source: str, where: str
) -> str:
    """The per-point table and the capacity table, for report.md (bench and simulate alike)."""
    slo = table["slo_tokens_per_s"]
    lines = [
        "## Capacity",
        "",
        f"SLO: p10 per-client tokens/s ≥ **{slo:.3g}** ({slo_source}). Capacity = the most clients whose p10 "
        "per-client tokens/s stays at or above it at every measured point up to there (0: even the smallest misses). "
        f"{where}",
        "",
        "| clients | mode | aggregate tok/s | aggregate decode tok/s | per-client tok/s median | p10 | "
        "TTFT p50 / p90 ms | "
        "server busy share | target passes/token | server s/token | meets SLO |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in sorted(points):
        for mode, f in points[n].items():
            if not f:
                continue
            busy = f"{f['server_busy_share']:.2f}" if "server_busy_share" in f else "–"
            per_token = f"{f['server_s_per_token']:.4f}" if "server_s_per_token" in f else "–"
            lines.append(
                f"| {n} | {mode} | {f['aggregate_tokens_per_s']:.2f} | {f['decode_tokens_per_s']:.2f} | "
                f"{f['per_client_tokens_per_s_median']:.2f} | {f['per_client_tokens_per_s_p10']:.2f} | "
                f"{f['ttft_ms_p50']:.0f} / {f['ttft_ms_p90']:.0f} | {busy} | "
                f"{f['target_passes_per_token']:.2f} | {per_token} | "
                f"{'yes' if f['per_client_tokens_per_s_p10'] >= slo else 'no'} |"
            )
    bases = [b for b in ("cloud-ar", "cloud-sd") if b in table["modes"]]
    lines += [
        "",
        "| mode | capacity (clients) | " + " | ".join(f"vs {b}" for b in bases) + " | note |",
        "|---|---|" + "---|" * len(bases) + "---|",
    ]
    for mode, row in table["modes"].items():
        ratios = []
        for base in bases:
            value = row.get(f"vs_{base}")
            ratios.append("–" if base == mode else ("n/a (baseline 0)" if value is None else f"{value:.2f}x"))
        notes = []
        if row["capacity"] == row["largest_point"]:
            notes.append(f"meets the SLO at the largest point: capacity ≥ {row['capacity']}")
        if row["also_met_at"]:
            notes.append("met again at " + ", ".join(map(str, row["also_met_at"])) + " after a miss (not counted)")
        lines.append(f"| {mode} | {row['capacity']} | " + " | ".join(ratios) + f" | {'; '.join(notes) or ''} |")
    lines.append("")
    return "\n".join(lines) + "\n"


def plot_capacity(points: Mapping[int, Mapping[str, Mapping[str, Any]]], slo: float, title: str, path: Any) -> None:
    """Per-client tokens/s against clients, one colour per mode: p10 solid (what capacity is
    judged on), median dashed; the SLO as a horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted(points)
    modes: list[str] = []
    for n in counts:
        modes += [m for m in points[n] if m not in modes]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for index, mode in enumerate(modes):
        xs = [n for n in counts if points[n].get(mode)]
        colour = f"C{index % 10}"
        ax.plot(
            xs,
            [points[n][mode]["per_client_tokens_per_s_p10"] for n in xs],
            marker="o",
            color=colour,
            label=f"{mode} (p10)",
        )
        ax.plot(
            xs,
            [points[n][mode]["per_client_tokens_per_s_median"] for n in xs],
            linestyle="--",
            color=colour,
            alpha=0.6,
            label=f"{mode} (median)",
        )
    ax.axhline(slo, color="black", linewidth=1.0, linestyle=":", label=f"SLO {slo:.3g} tok/s")
    values = [
        f[k]
        for n in counts
        for f in points[n].values()
        if f
        for k in ("per_client_tokens_per_s_p10", "per_client_tokens_per_s_median")
    ]
    positive = [v for v in values + [slo] if v > 0]
    if positive and max(positive) / min(positive) >= 10:  # a saturated baseline falls by orders of magnitude
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)
    if len(counts) > 1 and counts[-1] / max(1, counts[0]) >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.set_xlabel("clients sharing one batching verifier")
    ax.set_ylabel("per-client tokens/s")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
