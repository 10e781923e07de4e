"""The parts of `edgespec simulate`'s report that compare: simulated against a measured bench
run, and capacity ratios in words."""

from __future__ import annotations

from typing import Any


def compare_with_bench(simulated: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    """Per profile and mode: simulated and measured tokens/s, and their ratio."""
    rows: dict[str, Any] = {}
    for profile, modes in simulated["profiles"].items():
        for mode, stats in modes.items():
            real = measured.get("profiles", {}).get(profile, {}).get(mode)
            if not real:
                continue
            rows.setdefault(profile, {})[mode] = {
                "simulated_tokens_per_s": stats["tokens_per_s"],
                "measured_tokens_per_s": real["tokens_per_s"],
                "ratio": stats["tokens_per_s"] / real["tokens_per_s"] if real["tokens_per_s"] else 0.0,
                "simulated_vs_cloud_ar": stats.get("speedup_vs_cloud_ar", 0.0),
                "measured_vs_cloud_ar": real.get("speedup_vs_cloud_ar", 0.0),
                "simulated_hit_rate": stats.get("hit_rate", 0.0),
                "measured_hit_rate": real.get("hit_rate", 0.0),
            }
    return rows


def render_comparison(comparison: dict[str, Any], source: str) -> str:
    lines = ["", f"## Simulated vs measured (`{source}`)", ""]
    for profile, modes in comparison.items():
        lines += [
            f"### {profile}",
            "",
            "| mode | simulated tok/s | measured tok/s | simulated / measured | vs cloud-ar sim / meas "
            "| hit rate sim / meas |",
            "|---|---|---|---|---|---|",
        ]
        for mode, row in modes.items():
            lines.append(
                f"| {mode} | {row['simulated_tokens_per_s']:.2f} | {row['measured_tokens_per_s']:.2f} | "
                f"{row['ratio']:.2f} | {row['simulated_vs_cloud_ar']:.2f}x / {row['measured_vs_cloud_ar']:.2f}x | "
                f"{row['simulated_hit_rate']:.2f} / {row['measured_hit_rate']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def capacity_ratio_sentence(table: dict[str, Any]) -> str:
    """The capacity ratios in words, against cloud-ar and (where it ran) cloud-sd."""
    modes = table["modes"]
    parts = []
    for base in ("cloud-ar", "cloud-sd"):
        if base not in modes:
            continue
        ratios = []
        for mode, row in modes.items():
            if mode == base:
                continue
            value = row.get(f"vs_{base}")
            ratios.append(f"{mode} {'n/a' if value is None else f'{value:.2f}x'}")
        parts.append(f"Capacity vs {base} ({modes[base]['capacity']} clients): " + ", ".join(ratios) + ".")
    if "cloud-sd" not in modes:
        parts.append("(cloud-sd, the co-located baseline, was not in this run's modes.)")
    return " ".join(parts) + "\n\n"
