"""`profile engine`'s measurement runs every pass shape on an engine and leaves its sessions'
caches holding only their prefixes (each measured pass is rolled back)."""

from __future__ import annotations

from edgespec.engines.timing import TimingConfig, time_engine
from edgespec.engines.transformers_engine import TransformersEngine
from tests.support.tiny_models import tiny_model


def test_every_shape_is_timed_on_an_engine() -> None:
    engine = TransformersEngine(tiny_model("qwen2", seed=0))
    measured = time_engine(engine, TimingConfig(context=8, block=3, sessions=(1, 2), repeats=2))
    assert measured["engine"] == "transformers"
    assert set(measured["median_ms"]) == {
        "decode",
        "verify",
        "verify_sampled",
        "verify_x1",
        "verify_x2",
        "decode_x1",
        "decode_x2",
    }
    assert measured["prefill"]["tokens"] == 8 and measured["prefill"]["ms"] > 0
    assert all(measured["fastest_ms"][k] <= measured["median_ms"][k] for k in measured["median_ms"])
    assert set(measured["fastest_ratios"]) == {"verify_x2_over_x1"}
    assert set(measured["fastest_cpu_ms"]) == set(measured["fastest_ms"])
    assert all(ms > 0 for ms in measured["fastest_cpu_ms"].values())
