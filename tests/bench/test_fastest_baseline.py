"""--fastest-cloud-ar: cloud-ar on llama.cpp is a row of its own, every mode gets its ratio
against it, and the run that produces it is a cloud-ar-only llama.cpp deployment."""

from __future__ import annotations

from edgespec.bench.fastest_baseline import FASTEST_ROW, add_fastest_rows, fastest_config
from edgespec.bench.report import render_markdown
from edgespec.bench.runner import BenchConfig
from edgespec.bench.summary import summarize_all


def test_the_fastest_run_is_cloud_ar_on_llamacpp_without_exits() -> None:
    fast = fastest_config(BenchConfig(modes=("cloud-ar", "sd"), out="out/x"))
    assert (fast.engine, fast.exits, fast.modes) == ("llamacpp", "none", ("cloud-ar",))
    assert fast.out.endswith("fastest-cloud-ar")


def test_the_report_shows_the_fastest_row_and_every_modes_ratio() -> None:
    config = BenchConfig(modes=("cloud-ar", "sd"), profiles=("wan",))
    summary = summarize_all(config, [])
    add_fastest_rows(summary, config, [])
    modes = summary["profiles"]["wan"]
    assert modes[FASTEST_ROW]["engine"] == "llamacpp"
    assert all("speedup_vs_fastest_cloud_ar" in stats for stats in modes.values())
    text = render_markdown(summary, "edgespec bench --fastest-cloud-ar")
    assert FASTEST_ROW in text and "vs fastest cloud-ar" in text


def test_without_it_the_report_has_no_such_column() -> None:
    assert "vs fastest cloud-ar" not in render_markdown(
        summarize_all(BenchConfig(modes=("cloud-ar", "sd")), []), "edgespec bench"
    )
