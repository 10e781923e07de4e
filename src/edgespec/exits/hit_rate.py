"""Pre-draft hit rate of the exits in the real in-process ``sd-ee`` engine: greedy speculative
decoding with early exits on held-out prompts, counting per round whether the streamed early
verdict (the deepest exit whose confidence cleared its threshold) equalled the final verdict.
The same rounds `eval-exits` scores offline, here run through the round core itself."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.drivers.local_engine import LocalEngine
from edgespec.models.exit_heads import ExitHeads

logger = logging.getLogger(__name__)

COUNTED = ("rounds", "hits", "misses", "no_hint", "new_tokens")


def exits_up_to(heads: ExitHeads, max_layer: int | None) -> ExitHeads:
    """The exits at or before ``max_layer`` (all of them for None): the hit rate "from exits <= L"."""
    keep = [layer for layer in heads.layers if max_layer is None or layer <= max_layer]
    if not keep:
        raise ValueError(f"no exit at or before layer {max_layer} in {list(heads.layers)}")
    return heads.subset(keep)


@dataclass(frozen=True)
class HitRateConfig:
    """One greedy ``sd-ee`` generation per prompt."""

    max_new_tokens: int = 48
    gamma: int = 4
    eos_ids: frozenset[int] = frozenset()


def generate_reference(model: Any, max_new_tokens: int) -> Callable[[list[int]], list[int]]:
    """The oracle for ``measure_hit_rate``: `transformers` `generate` on the target, greedy."""

    def reference(prompt_ids: list[int]) -> list[int]:
        out = model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
        return out[0, len(prompt_ids) :].tolist()

    return reference


def measure_hit_rate(
    engine: LocalEngine,
    prompts: Iterable[tuple[str, list[int]]],
    config: HitRateConfig,
    reference: Callable[[list[int]], list[int]] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Rows per prompt (passed to ``on_row`` as they come) and totals: rounds, hits, misses,
    rounds without a hint, tokens, outputs equal to ``reference``'s where one is given, the hit
    rate (hits per round), the hint precision (hits per hint) and the counts per exit."""
    totals = {key: 0 for key in (*COUNTED, "equals_generate", "checked")}
    per_exit: dict[str, dict[str, int]] = {}
    generation = GenerationConfig(max_new_tokens=config.max_new_tokens, gamma=config.gamma, eos_ids=config.eos_ids)
    for prompt_id, prompt_ids in prompts:
        result = engine.generate(prompt_ids, Mode.SD_EE, generation)
        stats = result.stats
        row: dict[str, Any] = {"id": prompt_id, **{key: getattr(stats, key) for key in COUNTED}}
        row["per_exit"] = stats.per_exit
        if reference is not None:
            row["equals_generate"] = result.tokens == reference(prompt_ids)
            totals["checked"] += 1
            totals["equals_generate"] += int(row["equals_generate"])
        for key in COUNTED:
            totals[key] += row[key]
        for layer, entry in stats.per_exit.items():
            into = per_exit.setdefault(layer, dict.fromkeys(entry, 0))
            for key, value in entry.items():
                into[key] += value
        if on_row is not None:
            on_row(row)
    return {
        **totals,
        "hit_rate": round(totals["hits"] / max(totals["rounds"], 1), 3),
        "hint_precision": round(totals["hits"] / max(totals["hits"] + totals["misses"], 1), 3),
        "per_exit": per_exit,
    }
