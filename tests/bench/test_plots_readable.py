"""Every picture the benchmark, the simulator, the capacity sweep and exit evaluation write can be
read on its own: a title, axis labels with units, and a legend (or, for a heat map, a labelled
colour bar). Rendered from small synthetic data; the checks read matplotlib's objects, not pixels."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
from matplotlib.figure import Figure

from edgespec.bench.report import plot_speedups, plot_timeline
from edgespec.capacity import plot_capacity
from edgespec.exits.evaluation import plot_curves
from edgespec.sim.plots import plot_speedup_map


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """The figures the plotting functions save, kept for inspection after they close them."""
    figures: list[Figure] = []
    original = Figure.savefig

    def keep(self: Figure, *args: Any, **kwargs: Any) -> None:
        figures.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def render(saved: list[Figure], draw: Callable[[Path], None], path: Path) -> Figure:
    draw(path)
    assert path.stat().st_size > 1000
    (figure,) = saved
    return figure


def plot_axes(figure: Figure) -> list[Any]:
    """The axes that hold data (a colour bar's axes are its own)."""
    return [axis for axis in figure.axes if axis.get_label() != "<colorbar>"]


def assert_readable(figure: Figure, x_unit: str, y_unit: str) -> None:
    for axis in plot_axes(figure):
        assert axis.get_title() or figure._suptitle is not None
        assert axis.get_xlabel()
    first = plot_axes(figure)[0]
    assert x_unit in first.get_xlabel(), first.get_xlabel()
    assert y_unit in first.get_ylabel(), first.get_ylabel()


def timeline(events: list[tuple[str, str, float, float, int]]) -> dict[str, Any]:
    return {
        "mode": "sd-ee-pipelined",
        "profile": "wan",
        "prompt_id": "p0",
        "stats": {"timeline": [dict(zip(("actor", "what", "start_s", "end_s", "round"), e)) for e in events]},
    }


def test_the_round_timeline_has_a_legend_and_draws_the_link_busy(saved: list[Figure], tmp_path: Path) -> None:
    record = timeline(
        [
            ("edge", "draft", 0.00, 0.10, 0),
            ("cloud", "verify (server)", 0.16, 0.30, 0),
            ("link", "early@24", 0.25, 0.25, 0),
            ("edge", "pre-draft", 0.26, 0.36, 1),
            ("cloud", "verify (server)", 0.40, 0.55, 1),
        ]
    )
    figure = render(saved, lambda path: plot_timeline(record, path), tmp_path / "timeline.png")
    (axis,) = figure.axes
    assert_readable(figure, "(s)", "busy")
    assert "Round timeline" in axis.get_title()
    labels = [text.get_text() for text in axis.get_legend().get_texts()]
    assert {"draft", "pre-draft", "verify (server)"} <= set(labels)
    assert any(label.startswith("in flight") for label in labels)
    assert [tick.get_text() for tick in axis.get_yticklabels()] == ["edge", "link", "cloud"]
    # The link row holds the two rounds' flights (send to verify), not only instants.
    link_bars = [c for c in axis.collections if c.get_paths() and abs(c.get_paths()[0].vertices[:, 1].mean() - 1) < 0.3]
    assert len(link_bars) >= 2


def test_a_timeline_with_nothing_in_flight_drops_the_link_row_and_says_so(saved: list[Figure], tmp_path: Path) -> None:
    record = timeline([("cloud", "decode", 0.0, 0.05, 0), ("cloud", "decode", 0.05, 0.1, 1)])
    figure = render(saved, lambda path: plot_timeline(record, path), tmp_path / "timeline.png")
    (axis,) = figure.axes
    assert [tick.get_text() for tick in axis.get_yticklabels()] == ["edge", "cloud"]
    assert "no link row" in axis.get_title()
    assert axis.get_legend() is not None


def test_the_speedup_bars(saved: list[Figure], tmp_path: Path) -> None:
    summary = {
        "profiles": {
            "lan": {"cloud-ar": {"speedup_vs_cloud_ar": 1.0}, "sd": {"speedup_vs_cloud_ar": 1.4}},
            "wan": {"cloud-ar": {"speedup_vs_cloud_ar": 1.0}, "sd": {"speedup_vs_cloud_ar": 2.0}},
        }
    }
    figure = render(saved, lambda path: plot_speedups(summary, path), tmp_path / "speedup.png")
    assert_readable(figure, "link", "tokens/s")
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["cloud-ar", "sd"]


def test_the_capacity_curves(saved: list[Figure], tmp_path: Path) -> None:
    def point(p10: float) -> dict[str, float]:
        return {"per_client_tokens_per_s_p10": p10, "per_client_tokens_per_s_median": p10 * 1.1}

    points = {1: {"cloud-ar": point(10.0), "sd": point(12.0)}, 8: {"cloud-ar": point(4.0), "sd": point(9.0)}}
    figure = render(saved, lambda path: plot_capacity(points, 5.0, "H200, wan", path), tmp_path / "clients.png")
    assert_readable(figure, "clients", "tokens/s")
    labels = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert "sd (p10)" in labels and any(label.startswith("SLO") for label in labels)


def test_the_speedup_map(saved: list[Figure], tmp_path: Path) -> None:
    grid = {"sd": [[1.2, 0.9], [1.6, 1.1]], "sd-ee-pipelined": [[1.4, 1.0], [1.9, 1.3]]}
    figure = render(
        saved, lambda path: plot_speedup_map(grid, [10, 50], [20, 60], "H200 costs", path), tmp_path / "map.png"
    )
    assert_readable(figure, "(ms)", "(ms)")
    assert figure._suptitle.get_text() == "H200 costs"
    (colour_bar,) = [axis for axis in figure.axes if axis.get_label() == "<colorbar>"]
    assert "cloud-ar" in colour_bar.get_ylabel()


def test_the_exit_curves(saved: list[Figure], tmp_path: Path) -> None:
    curve = [{"count": 10, "coverage": c, "precision": 0.8 + c / 10, "threshold": 1 - c} for c in (0.2, 0.5, 0.9)]
    tables = {"candidates": {"24": {"curve": curve, "top1_agreement": 0.7, "precision": 0.85, "coverage": 0.5}}}
    figure = render(saved, lambda path: plot_curves(tables, str(path)), tmp_path / "curves.png")
    assert_readable(figure, "coverage", "precision")
    for axis in figure.axes:
        assert axis.get_legend() is not None and axis.get_title()
