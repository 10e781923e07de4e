"""Evaluating exits on recorded speculative rounds (see ``recorded_rounds.record_rounds``).

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

from edgespec.decoding.early import candidate_verdict
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
    heads: ExitHeads,
    rounds: dict[str, torch.Tensor],
    final_norm: nn.Module,
    head_weight: torch.Tensor,
    chunk: int = 32,
    candidates: bool = False,
) -> dict[int, dict[str, torch.Tensor]]:
    """Per exit layer, over recorded rounds: ``agree`` [R, gamma+1] (exit top-1 == final top-1),
    ``correct`` [R] (early verdict == final verdict), ``confidence`` [R], ``rejects`` [R] (the
    early verdict rejects a draft token: the verdicts that tell a client more than the send-time
    guess). ``candidates``: score only the draft's recorded top-k ids (``agree`` then covers the
    drafted positions: the exit's best candidate == the final top-1)."""
    if candidates:
        return _candidate_outcomes(heads, rounds, final_norm, head_weight)
    verdicts = rounds["verdict"]
    drafts = rounds["draft"]
    final_top1 = rounds["final_top1"].long()
    out: dict[int, dict[str, torch.Tensor]] = {}
    with torch.no_grad():
        for layer in heads.layers:
            hidden = rounds[f"h.{layer}"]
            agree, correct, confidence, rejects = [], [], [], []
            for start in range(0, hidden.shape[0], chunk):
                logits = (final_norm(heads.adapter(layer)(hidden[start : start + chunk])) @ head_weight.T).float()
                agree.append(logits.argmax(-1) == final_top1[start : start + chunk])
                for i in range(logits.shape[0]):
                    row = start + i
                    block = drafts[row].tolist()
                    verdict = greedy_verdict(logits[i], block)
                    correct.append(
                        verdict.accepted == int(verdicts[row, 0]) and verdict.next_token == int(verdicts[row, 1])
                    )
                    confidence.append(verdict_confidence(logits[i], verdict))
                    rejects.append(verdict.accepted < len(block))
            out[layer] = {
                "agree": torch.cat(agree),
                "correct": torch.tensor(correct),
                "confidence": torch.tensor(confidence, dtype=torch.float64),
                "rejects": torch.tensor(rejects),
            }
            out[layer]["streams"] = torch.ones_like(out[layer]["rejects"])
    return out


def _candidate_outcomes(
    heads: ExitHeads, rounds: dict[str, torch.Tensor], final_norm: nn.Module, head_weight: torch.Tensor
) -> dict[int, dict[str, torch.Tensor]]:
    if "candidates" not in rounds:
        raise ValueError("these recorded rounds predate candidate ids: record them again (delete the rounds directory)")
    verdicts = rounds["verdict"]
    drafts = rounds["draft"]
    gamma = drafts.shape[1]
    final_top1 = rounds["final_top1"].long()[:, :gamma]
    ids = rounds["candidates"].long()  # [R, gamma, k]
    rows = head_weight[ids]  # [R, gamma, k, H]
    out: dict[int, dict[str, torch.Tensor]] = {}
    with torch.no_grad():
        for layer in heads.layers:
            normed = final_norm(heads.adapter(layer)(rounds[f"h.{layer}"][:, :gamma]))
            scores = torch.einsum("rgh,rgkh->rgk", normed.float(), rows.float())
            best = ids.gather(2, scores.argmax(-1, keepdim=True)).squeeze(-1)
            correct, confidence, rejects = [], [], []
            for r in range(scores.shape[0]):
                block = drafts[r].tolist()
                verdict, sure = candidate_verdict(scores[r], ids[r], block)
                correct.append(verdict.accepted == int(verdicts[r, 0]) and verdict.next_token == int(verdicts[r, 1]))
                confidence.append(sure)
                rejects.append(verdict.accepted < gamma)
            out[layer] = {
                "agree": best == final_top1,
                "correct": torch.tensor(correct),
                "confidence": torch.tensor(confidence, dtype=torch.float64),
                "rejects": torch.tensor(rejects),
            }
            # A candidate exit accepting the whole block has not scored the bonus: never streamed.
            out[layer]["streams"] = out[layer]["rejects"]
    return out


def guess_outcomes(rounds: dict[str, torch.Tensor]) -> dict[str, Any]:
    """How often the send-time guess (whole block accepted, the draft's own next token) was the
    final verdict, and how often the final verdict rejected a draft token (what exits must name)."""
    gamma = rounds["draft"].shape[1]
    verdicts = rounds["verdict"]
    total = int(verdicts.shape[0])
    out: dict[str, Any] = {"rounds": total, "rejections": int((verdicts[:, 0] < gamma).sum())}
    if "guess_bonus" in rounds:
        right = (verdicts[:, 0] == gamma) & (verdicts[:, 1] == rounds["guess_bonus"])
        out["guess_right"] = int(right.sum())
    if "candidates" in rounds:
        # Rejections whose correction is among the draft's candidates at that position: the most a
        # candidate exit can name.
        rejected = (verdicts[:, 0] < gamma).nonzero().flatten().tolist()
        out["correction_in_candidates"] = sum(
            int(verdicts[r, 1]) in rounds["candidates"][r, int(verdicts[r, 0])].tolist() for r in rejected
        )
    return out


def hint_outcomes(
    outcomes: dict[int, dict[str, torch.Tensor]], thresholds: dict[int, float], layers: Sequence[int] | None = None
) -> dict[str, Any]:
    """Pre-draft hints as the engine scores them: the hint is the last (deepest) exit whose
    confidence clears its threshold; a hit when its verdict equals the final one."""
    layers = sorted(layers if layers is not None else outcomes)
    rounds = int(next(iter(outcomes.values()))["correct"].numel())
    hits = misses = 0
    by_layer = {layer: 0 for layer in layers}
    for r in range(rounds):
        hint = None
        for layer in layers:
            if float(outcomes[layer]["confidence"][r]) >= thresholds[layer] and bool(outcomes[layer]["streams"][r]):
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
        cleared = (conf >= thresholds[layer]) & result["streams"]
        rejects = result["rejects"]
        table[str(layer)] = {
            "rounds": int(right.numel()),
            "top1_agreement": float(result["agree"].float().mean()),
            "top1_agreement_first_position": float(result["agree"][:, 0].float().mean()),
            "verdict_match": float(right.float().mean()),
            # Rounds whose early verdict is a right rejection (what the guess cannot know), and those
            # streamed at the threshold.
            "right_rejections": int((right & rejects).sum()),
            "right_rejections_streamed": int((right & rejects & cleared).sum()),
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
            (line,) = axes[row][0].plot(
                cov, prec, marker=".", label=f"exit {layer} (agree {entry['top1_agreement']:.2f})"
            )
            axes[row][1].plot(th, prec, marker=".", color=line.get_color(), label=f"exit {layer}")
            if entry["precision"] is not None:
                axes[row][0].scatter(
                    [entry["coverage"]], [entry["precision"]], s=80, facecolors="none", edgecolors=line.get_color()
                )
        axes[row][0].set(
            xlabel="coverage (share of rounds streamed)",
            ylabel="precision (early verdict == final)",
            title=f"{name}: precision vs coverage",
            ylim=(0, 1.02),
            xlim=(0, 1.02),
        )
        axes[row][1].set(
            xlabel="confidence threshold (min top-1 prob)",
            ylabel="precision",
            title=f"{name}: precision vs threshold",
            ylim=(0, 1.02),
        )
        for ax in axes[row]:
            ax.grid(alpha=0.3)
            ax.axhline(0.9, color="grey", linestyle=":", linewidth=1)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
