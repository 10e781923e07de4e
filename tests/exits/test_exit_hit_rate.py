"""`edgespec exit-hit-rate`'s counting on tiny models: per-prompt rows add up to the totals, the
outputs equal `generate`, and exits can be limited to those at or before a layer."""

from __future__ import annotations

from typing import Any

import pytest

from edgespec.drivers.local_engine import LocalEngine
from edgespec.exits.heads import ExitHeads, ExitSpec
from edgespec.exits.hit_rate import HitRateConfig, exits_up_to, generate_reference, measure_hit_rate
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from tests.support.tiny_models import layer_skip_copy, tiny_model


def test_rows_add_up_to_the_totals_and_every_output_equals_generate() -> None:
    target = tiny_model("qwen2", seed=0)
    heads = ExitHeads([ExitSpec(2, threshold=0.0), ExitSpec(3, threshold=0.0)], 64)
    draft = DraftRuntime(layer_skip_copy(tiny_model("qwen2", seed=0), keep=3))
    engine = LocalEngine(TargetRuntime(target, heads), draft)
    prompts = [("a", [5, 9, 13]), ("b", [40, 2, 77, 31])]
    rows: list[dict[str, Any]] = []
    config = HitRateConfig(max_new_tokens=12, gamma=3)
    totals = measure_hit_rate(engine, prompts, config, reference=generate_reference(target, 12), on_row=rows.append)
    assert [r["id"] for r in rows] == ["a", "b"]
    assert totals["checked"] == totals["equals_generate"] == 2
    for key in ("rounds", "hits", "misses", "no_hint", "new_tokens"):
        assert totals[key] == sum(r[key] for r in rows)
    assert totals["new_tokens"] == 24
    assert totals["hit_rate"] == round(totals["hits"] / totals["rounds"], 3)
    assert set(totals["per_exit"]) == {"2", "3"}


def test_exits_can_be_limited_to_those_at_or_before_a_layer() -> None:
    heads = ExitHeads([ExitSpec(2), ExitSpec(3)], 64)
    assert exits_up_to(heads, 2).layers == (2,)
    assert exits_up_to(heads, None).layers == (2, 3)
    with pytest.raises(ValueError, match="no exit at or before layer 1"):
        exits_up_to(heads, 1)
