"""Evaluating exits on recorded speculative rounds (see ``hidden_cache.record_rounds``).

Per exit layer:
* **top-1 agreement**: how often the exit's argmax equals the final layer's, over every verified
  position of every round (the positions the target actually scores during verification);
* **early verdict**: the final rule (greedy: accepted prefix + next token) applied to the exit's
  logits, with its confidence (``verdict_confidence``: the lowest top-1 probability over the
  positions that decide it), exactly as ``EarlyVerdictJudge`` computes it online;
* **precision / coverage curve**: for each threshold t, coverage = share of rounds with
  confidence >= t, precision = share of those whose early verdict equals the final verdict;
* **pre-draft hit rate** with thresholds: the hint is the last exit whose verdict clears its
  threshold (later exits refine earlier ones), as ``LocalEngine`` scores it.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from edgespec.decoding.verification import greedy_verdict, verdict_confidence
from edgespec.models.exit_heads import ExitHeads

THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(21)) + (0.97, 0.98, 0.99, 0.995)


def benchmark_prompts(tokenizer: Any, per_set: int, max_prompt_tokens: int = 512) -> Iterator[tuple[str, list[int]]]:
    """Held-out evaluation prompts: the first ``per_set`` of MT-bench, then of HumanEval."""
    from edgespec.data.prompt_sets import load_prompts
    from edgespec.prompting import render_prompt

    for name in ("mtbench", "humaneval"):
        for record in load_prompts(name, per_set):
            ids = render_prompt(tokenizer, list(record.messages))
            if len(ids) <= max_prompt_tokens:
                yield record.id, ids


def calibration_prompts(tokenizer: Any, limit: int, max_prompt_tokens: int = 384) -> Iterator[tuple[str, list[int]]]:
    """First user turns of held-out ShareGPT conversations (the ``calibration`` split)."""
    from edgespec.data.sharegpt import iter_conversations, render_first_prompt

    prompts = (
        (f"sharegpt/{c.id}", ids)
        for c in iter_conversations("calibration")
        if (ids := render_first_prompt(tokenizer, c, max_prompt_tokens)) is not None
    )
    return itertools.islice(prompts, limit)


def exit_outcomes(
    heads: ExitHeads, rounds: dict[str, torch.Tensor], final_norm: nn.Module, head_weight: torch.Tensor, chunk: int = 32
) -> dict[int, dict[str, torch.Tensor]]:
    """Per exit layer, over recorded rounds: ``agree`` [R, gamma+1] (exit top-1 == final top-1),
    ``correct`` [R] (early verdict == final verdict), ``confidence`` [R]."""
    verdicts = rounds["verdict"]
    drafts = rounds["draft"]
    final_top1 = rounds["final_top1"].long()
    out: dict[int, dict[str, torch.Tensor]] = {}
    with torch.no_grad():
        for layer in heads.layers:
            hidden = rounds[f"h.{layer}"]
            agree, correct, confidence = [], [], []
            for start in range(0, hidden.shape[0], chunk):
                logits = (final_norm(heads.adapter(layer)(hidden[start : start + chunk])) @ head_weight.T).float()
                agree.append(logits.argmax(-1) == final_top1[start : start + chunk])
                for i in range(logits.shape[0]):
                    row = start + i
                    block = drafts[row].tolist()
                    verdict = greedy_verdict(logits[i], block)
                    correct.append(verdict.accepted == int(verdicts[row, 0]) and verdict.next_token == int(verdicts[row, 1]))
                    confidence.append(verdict_confidence(logits[i], verdict))
            out[layer] = {"agree": torch.cat(agree), "correct": torch.tensor(correct), "confidence": torch.tensor(confidence, dtype=torch.float64)}
    return out


def hint_outcomes(outcomes: dict[int, dict[str, torch.Tensor]], thresholds: dict[int, float], layers: Sequence[int] | None = None) -> dict[str, Any]:
    """Pre-draft hints as the engine scores them: the hint is the last (deepest) exit whose
    confidence clears its threshold; a hit when its verdict equals the final one."""
    layers = sorted(layers if layers is not None else outcomes)
    rounds = int(next(iter(outcomes.values()))["correct"].numel())
    hits = misses = 0
    by_layer = {layer: 0 for layer in layers}
    for r in range(rounds):
        hint = None
        for layer in layers:
            if float(outcomes[layer]["confidence"][r]) >= thresholds[layer]:
                hint = layer
        if hint is None:
            continue
        by_layer[hint] += 1
        if bool(outcomes[hint]["correct"][r]):
            hits += 1
        else:
            misses += 1
    return {
        "rounds": rounds,
        "hits": hits,
        "misses": misses,
        "no_hint": rounds - hits - misses,
        "hit_rate": hits / max(rounds, 1),
        "hint_precision": hits / max(hits + misses, 1),
        "hint_from_layer": {str(k): v for k, v in by_layer.items()},
    }


def summarize(outcomes: dict[int, dict[str, torch.Tensor]], thresholds: dict[int, float]) -> dict[str, Any]:
    from edgespec.exits.calibration import precision_coverage

    table = {}
    for layer, result in outcomes.items():
        conf, right = result["confidence"], result["correct"]
        cleared = conf >= thresholds[layer]
        table[str(layer)] = {
            "rounds": int(right.numel()),
            "top1_agreement": float(result["agree"].float().mean()),
            "top1_agreement_first_position": float(result["agree"][:, 0].float().mean()),
            "verdict_match": float(right.float().mean()),
            "threshold": thresholds[layer],
            "coverage": float(cleared.float().mean()),
            "precision": float(right[cleared].float().mean()) if int(cleared.sum()) else None,
            "curve": [vars(p) for p in precision_coverage(conf, right, THRESHOLDS)],
        }
    return table


def plot_curves(tables: dict[str, dict[str, Any]], path: str) -> None:
    """Precision vs coverage (left) and precision vs threshold (right), one line per exit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(tables), 2, figsize=(11, 4.2 * len(tables)), squeeze=False)
    for row, (name, table) in enumerate(tables.items()):
        for layer, entry in table.items():
            curve = [p for p in entry["curve"] if p["count"] > 0]
            cov = [p["coverage"] for p in curve]
            prec = [p["precision"] for p in curve]
            th = [p["threshold"] for p in curve]
            (line,) = axes[row][0].plot(cov, prec, marker=".", label=f"exit {layer} (agree {entry['top1_agreement']:.2f})")
            axes[row][1].plot(th, prec, marker=".", color=line.get_color(), label=f"exit {layer}")
            if entry["precision"] is not None:
                axes[row][0].scatter([entry["coverage"]], [entry["precision"]], s=80, facecolors="none", edgecolors=line.get_color())
        axes[row][0].set(xlabel="coverage (share of rounds streamed)", ylabel="precision (early verdict == final)", title=f"{name}: precision vs coverage", ylim=(0, 1.02), xlim=(0, 1.02))
        axes[row][1].set(xlabel="confidence threshold (min top-1 prob)", ylabel="precision", title=f"{name}: precision vs threshold", ylim=(0, 1.02))
        for ax in axes[row]:
            ax.grid(alpha=0.3)
            ax.axhline(0.9, color="grey", linestyle=":", linewidth=1)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
