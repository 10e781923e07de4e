"""The simulator's picture of where edge-cloud speculation beats cloud-ar (the capacity picture,
per-client speed as clients share one verifier, is `edgespec.capacity.plot_capacity`, shared with
`edgespec bench`)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def plot_speedup_map(
    grid: dict[str, list[list[float]]], rtts_ms: Sequence[float], decode_ms: Sequence[float], title: str, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    modes = list(grid)
    fig, axes = plt.subplots(1, len(modes), figsize=(3.6 * len(modes), 3.8), squeeze=False)
    values = [v for m in modes for row in grid[m] for v in row]
    norm = TwoSlopeNorm(vmin=min(min(values), 0.99), vcenter=1.0, vmax=max(max(values), 1.01))
    for ax, mode in zip(axes[0], modes):
        image = ax.imshow(grid[mode], origin="lower", cmap="RdBu", norm=norm, aspect="auto")
        ax.set_xticks(range(len(rtts_ms)), [f"{r:g}" for r in rtts_ms])
        ax.set_yticks(range(len(decode_ms)), [f"{d:g}" for d in decode_ms])
        ax.set_xlabel("round-trip time (ms)")
        ax.set_title(mode)
        for y, row in enumerate(grid[mode]):
            for x, value in enumerate(row):
                ax.text(x, y, f"{value:.2f}", ha="center", va="center", fontsize=7)
    axes[0][0].set_ylabel("target decode time (ms)")
    fig.colorbar(image, ax=axes[0].tolist(), label="tokens/s vs cloud-ar (blue: speculation wins)")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
