"""Training exit adapters on the hidden-state cache by self-distillation.

The target is frozen, so training only needs the cached hidden states, the frozen final norm and
the frozen LM head. The loss of an exit at a position is the KL divergence from the final
layer's distribution to the exit's, optionally plus cross-entropy on the final layer's argmax.

The LM head has ~150k rows, and a full softmax through it (forward and backward, per position,
per exit) would dominate the cost. The KL is therefore computed over a per-position support:
the final layer's top-k ids (from the cache: typically most of the probability mass) plus R ids
drawn uniformly per step from the rest of the vocabulary, shared by the batch. Each sampled
tail id stands for (V - k) / R ids, so its logit gets ``log((V - k) / R)`` added in *both*
distributions (a sampled-softmax estimate of the tail mass); a sampled id that is in a
position's top-k is masked out there. Both distributions are then normalised over the support
and the KL is taken between them. Cost per position: (k + R) rows of the head instead of V.

Determinism: each step's batch and tail sample come from a generator seeded with (seed, step),
so a run resumed from a checkpoint (adapters, optimizer, step) takes exactly the steps an
uninterrupted run would have taken.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from edgespec.models.exit_heads import ExitHeads, ExitSpec

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainConfig:
    layers: tuple[int, ...]
    kind: str = "linear"
    rank: int = 0
    steps: int = 600
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    sampled_tail: int = 1024  # R: uniformly sampled non-top-k ids per step
    ce_weight: float = 0.0
    seed: int = 0
    checkpoint_every: int = 100
    holdout_fraction: float = 0.1  # of cache sources (the last ones), for held-out agreement
    skip_positions: int = 0  # leading positions of each source to ignore (e.g. a fixed system prompt)


@dataclass
class CacheData:
    """Training positions in memory: hidden states per layer, final normed hidden, top-k ids."""

    hidden: dict[int, torch.Tensor]  # layer -> [N, H] float32
    final: torch.Tensor  # [N, H] float32
    topk_ids: torch.Tensor  # [N, k] int64
    source: torch.Tensor  # [N]
    position: torch.Tensor  # [N] index within its source

    def subset(self, mask: torch.Tensor) -> "CacheData":
        return CacheData(
            {k: v[mask] for k, v in self.hidden.items()},
            self.final[mask],
            self.topk_ids[mask],
            self.source[mask],
            self.position[mask],
        )

    @property
    def size(self) -> int:
        return int(self.final.shape[0])

    @staticmethod
    def from_tensors(tensors: dict[str, torch.Tensor], layers: Sequence[int]) -> "CacheData":
        source = tensors["source"].long()
        position = torch.zeros_like(source)
        starts = torch.ones_like(source, dtype=torch.bool)
        starts[1:] = source[1:] != source[:-1]
        start_index = torch.cummax(torch.where(starts, torch.arange(len(source)), torch.zeros_like(source)), 0).values
        position = torch.arange(len(source)) - start_index
        return CacheData(
            {layer: tensors[f"h.{layer}"].float() for layer in layers},
            tensors["final"].float(),
            tensors["topk_ids"].long(),
            source,
            position,
        )


def split_holdout(data: CacheData, fraction: float, skip_positions: int = 0) -> tuple[CacheData, CacheData]:
    sources = torch.unique(data.source)
    held = max(1, int(round(len(sources) * fraction))) if fraction > 0 and len(sources) > 1 else 0
    held_sources = sources[len(sources) - held :] if held else sources[:0]
    is_held = torch.isin(data.source, held_sources)
    keep = data.position >= skip_positions
    return data.subset(~is_held & keep), data.subset(is_held & keep)


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


@dataclass
class DistillationTarget:
    """What one batch is distilled towards, shared by every exit: the head rows of each
    position's support, and the final layer's log-probabilities over it."""

    top_rows: torch.Tensor  # [B, k, H] head rows of each position's top-k
    tail_rows: torch.Tensor  # [R, H] head rows of the sampled tail
    offset: torch.Tensor  # [k + R] sampled-softmax correction (0 on top-k, log((V-k)/R) on the tail)
    mask: torch.Tensor  # [B, k + R] tail ids that duplicate a top-k id of the position
    target_logp: torch.Tensor  # [B, k + R]


@torch.no_grad()
def distillation_target(
    final_hidden: torch.Tensor, topk_ids: torch.Tensor, tail_ids: torch.Tensor, head_weight: torch.Tensor
) -> DistillationTarget:
    vocab, k = head_weight.shape[0], topk_ids.shape[1]
    top_rows = head_weight[topk_ids]
    tail_rows = head_weight[tail_ids]
    final_logits = torch.cat([torch.einsum("bh,bkh->bk", final_hidden, top_rows), final_hidden @ tail_rows.T], dim=1)
    offset = torch.zeros(final_logits.shape[1])
    offset[k:] = math.log(max(vocab - k, 1) / max(len(tail_ids), 1))
    duplicate = (tail_ids[None, :, None] == topk_ids[:, None, :]).any(-1)  # [B, R]
    mask = torch.cat([torch.zeros(topk_ids.shape, dtype=torch.bool), duplicate], dim=1)
    target_logp = torch.log_softmax((final_logits + offset).masked_fill(mask, float("-inf")), dim=-1)
    return DistillationTarget(top_rows, tail_rows, offset, mask, target_logp)


def exit_distillation_loss(
    exit_hidden: torch.Tensor, target: DistillationTarget, final_norm: nn.Module, ce_weight: float = 0.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """KL(final || exit) over the support of ``target`` (+ ``ce_weight`` * CE on the final
    argmax, which is top-k[0]). ``exit_hidden``: the adapter's output [B, H], before the norm."""
    k = target.top_rows.shape[1]
    exit_normed = final_norm(exit_hidden)
    exit_logits = torch.cat(
        [torch.einsum("bh,bkh->bk", exit_normed, target.top_rows), exit_normed @ target.tail_rows.T], dim=1
    )
    exit_logp = torch.log_softmax((exit_logits + target.offset).masked_fill(target.mask, float("-inf")), dim=-1)
    target_p = target.target_logp.exp()
    terms = torch.where(target_p > 0, target_p * (target.target_logp - exit_logp), torch.zeros_like(target_p))
    kl = terms.sum(-1).mean()
    ce = -exit_logp[:, 0].mean()
    loss = kl + ce_weight * ce if ce_weight else kl
    with torch.no_grad():
        agree = (exit_logits[:, :k].argmax(-1) == 0).float().mean()
    return loss, {"kl": float(kl.detach()), "ce": float(ce.detach()), "top1_in_support": float(agree)}


def distillation_loss(
    exit_hidden: torch.Tensor,
    final_hidden: torch.Tensor,
    topk_ids: torch.Tensor,
    tail_ids: torch.Tensor,
    final_norm: nn.Module,
    head_weight: torch.Tensor,
    ce_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """KL(final || exit) over each position's top-k plus the shared sampled tail (see module doc).

    ``exit_hidden``: adapter output [B, H] (before the final norm); ``final_hidden``: the final
    *normed* hidden state [B, H]; ``topk_ids``: [B, k]; ``tail_ids``: [R].
    """
    target = distillation_target(final_hidden, topk_ids, tail_ids, head_weight)
    return exit_distillation_loss(exit_hidden, target, final_norm, ce_weight)


@torch.no_grad()
def top1_agreement(
    heads: ExitHeads, data: CacheData, final_norm: nn.Module, head_weight: torch.Tensor, chunk: int = 256
) -> dict[int, float]:
    """Full-vocabulary top-1 agreement of each exit with the final layer (its argmax is top-k[0])."""
    result = {}
    for layer in heads.layers:
        agree = 0
        for start in range(0, data.size, chunk):
            hidden = data.hidden[layer][start : start + chunk]
            logits = final_norm(heads.adapter(layer)(hidden)) @ head_weight.T
            agree += int((logits.argmax(-1) == data.topk_ids[start : start + chunk, 0]).sum())
        result[layer] = agree / max(data.size, 1)
    return result


def _lr_at(config: TrainConfig, step: int) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def new_heads(config: TrainConfig, hidden_size: int) -> ExitHeads:
    torch.manual_seed(config.seed)
    return ExitHeads([ExitSpec(layer, config.kind, rank=config.rank) for layer in config.layers], hidden_size)


def _save_checkpoint(
    path: Path, heads: ExitHeads, optimizer: torch.optim.Optimizer, step: int, history: list[dict[str, Any]]
) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"step": step, "heads": heads.state_dict(), "optimizer": optimizer.state_dict(), "history": history}, tmp
    )
    os.replace(tmp, path)


def train_exits(
    config: TrainConfig,
    train: CacheData,
    final_norm: nn.Module,
    head_weight: torch.Tensor,
    work_dir: str | Path,
    stop_after: int | None = None,
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[ExitHeads, list[dict[str, Any]]]:
    """Train all of ``config.layers`` jointly (each adapter sees the same batches); resumes from
    ``work_dir/checkpoint.pt`` when present. ``stop_after``: stop (as if interrupted) once this
    many steps are done in total. Returns the heads and the loss history (one entry per step)."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    final_norm = final_norm.float().requires_grad_(False)
    head_weight = head_weight.detach().float()
    hidden_size = head_weight.shape[1]
    heads = new_heads(config, hidden_size).float().train()
    params = [p for p in heads.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98))
    start, history = 0, []
    checkpoint = work_dir / CHECKPOINT_FILE
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        heads.load_state_dict(state["heads"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = int(state["step"]), list(state["history"])
        logger.info("resuming exit training at step %d from %s", start, checkpoint)
    vocab = head_weight.shape[0]
    end = config.steps if stop_after is None else min(config.steps, stop_after)
    bar = tqdm(
        total=config.steps,
        initial=start,
        desc=f"train {config.kind} exits {list(config.layers)}",
        disable=None if progress else True,
    )
    step = start
    for step in range(start, end):
        generator = _step_generator(config.seed, step)
        batch = torch.randint(0, train.size, (config.batch_size,), generator=generator)
        tail = (
            torch.randint(0, vocab, (config.sampled_tail,), generator=generator)
            if config.sampled_tail
            else torch.zeros(0, dtype=torch.long)
        )
        lr = _lr_at(config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        total = torch.zeros(())
        metrics: dict[str, float] = {"step": step + 1, "lr": lr}
        target = distillation_target(train.final[batch], train.topk_ids[batch], tail, head_weight)
        for layer in config.layers:
            loss, parts = exit_distillation_loss(
                heads.adapter(layer)(train.hidden[layer][batch]), target, final_norm, config.ce_weight
            )
            total = total + loss
            metrics.update({f"{name}@{layer}": round(value, 5) for name, value in parts.items()})
        total.backward()
        optimizer.step()
        history.append(metrics)
        if on_step:
            on_step(step + 1, metrics)
        bar.update(1)
        bar.set_postfix({f"kl@{layer}": metrics[f"kl@{layer}"] for layer in config.layers[-2:]})
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == end:
            _save_checkpoint(checkpoint, heads, optimizer, step + 1, history)
    bar.close()
    return heads.eval(), history


def training_metadata(
    config: TrainConfig,
    history: list[dict[str, Any]],
    cache_manifest: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    last = history[-min(len(history), 20) :]
    final_metrics = (
        {key: round(sum(h[key] for h in last) / len(last), 5) for key in last[0] if "@" in key} if last else {}
    )
    return {
        "source": "edgespec train-exits",
        "architecture": {"kind": config.kind, "rank": config.rank, "layers": list(config.layers)},
        "training": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "steps": len(history),
        "loss": "KL(final || exit) over final top-k + uniformly sampled tail (sampled-softmax correction)"
        + (f" + {config.ce_weight} * CE(final argmax)" if config.ce_weight else ""),
        "data": {
            k: cache_manifest.get(k)
            for k in ("data", "target", "dtype", "positions", "layers", "topk")
            if k in cache_manifest
        }
        | {"sources": sum(s["sources"] for s in cache_manifest.get("shards", []))},
        "train_metrics_last20": final_metrics,
        "created": time.strftime("%Y-%m-%d"),
        **(extra or {}),
    }
