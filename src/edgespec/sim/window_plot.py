"""The window drawn: per panel (a verifier's cost shape and an edge device), the best speculative
mode's speed-up over the fastest `cloud-ar` across target decode time and round trip, the 1.0
contour that is the window's edge, and measured or assumed settings placed on it as markers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

MARKER_SHAPES = ("o", "s", "^", "D", "v", "P", "X", "*")


@dataclass(frozen=True)
class Marker:
    label: str
    decode_ms: float  # x: the decode time of the cloud-ar it is compared with
    rtt_ms: float
    speedup: float  # its own simulated best-mode speed-up (not read off the map)


@dataclass(frozen=True)
class Panel:
    title: str
    decode_ms: Sequence[float]
    rtt_ms: Sequence[float]
    best: Sequence[Sequence[float]]  # best[i][j]: decode_ms[i], rtt_ms[j]
    markers: Sequence[Marker] = field(default_factory=tuple)


def plot_window(panels: Sequence[Panel], title: str, baseline: str, path: Path) -> list[list[str]]:
    """One row of panels sharing one colour scale (white at 1.0, blue where speculation wins);
    returns each panel's legend entries as drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    values = [v for panel in panels for row in panel.best for v in row]
    norm = TwoSlopeNorm(vmin=min(min(values), 0.95), vcenter=1.0, vmax=max(max(values), 1.05))
    levels = np.linspace(norm.vmin, norm.vmax, 25)
    columns = min(2, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6.2 * columns, 4.8 * rows), squeeze=False, layout="constrained")
    used = list(axes.flat)[: len(panels)]
    for ax in list(axes.flat)[len(panels) :]:
        ax.remove()
    filled = None
    for ax, panel in zip(used, panels):
        x, y = np.meshgrid(panel.decode_ms, panel.rtt_ms)
        z = np.array(panel.best).T  # [rtt, decode]
        filled = ax.contourf(x, y, z, levels=levels, cmap="RdBu", norm=norm)
        if z.min() < 1.0 < z.max():
            edge = ax.contour(x, y, z, levels=[1.0], colors="black", linewidths=2)
            ax.clabel(edge, fmt={1.0: "1.0"}, fontsize=8)
        elif z.max() <= 1.0:
            ax.text(0.97, 0.05, "no crossing: never wins here", transform=ax.transAxes, ha="right", fontsize=8)
        for index, (shape, marker) in enumerate(zip(MARKER_SHAPES, panel.markers)):
            ax.scatter(
                marker.decode_ms,
                marker.rtt_ms,
                marker=shape,
                s=max(40, 160 - 50 * index),  # later markers smaller: settings at one point stay visible
                facecolor="yellow",
                edgecolor="black",
                zorder=3,
                label=f"{marker.label}: {marker.speedup:.2f}×",
            )
        ax.set_xscale("log")
        ax.set_xlim(min(panel.decode_ms), max(panel.decode_ms))
        ax.set_xlabel("target decode time (ms/token, log scale)")
        ax.set_ylabel("round-trip time (ms)")
        ax.set_title(panel.title, fontsize=9)
        ax.plot([], [], color="black", linewidth=2, label="1.0: the window's edge")
        ax.legend(fontsize=7, loc="upper left", framealpha=0.85)
    assert filled is not None
    fig.colorbar(filled, ax=used, label=f"best mode's tokens/s ÷ {baseline}'s (blue: speculation wins)")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    drawn = [[text.get_text() for text in ax.get_legend().get_texts()] for ax in used]
    plt.close(fig)
    return drawn
