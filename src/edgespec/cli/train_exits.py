"""`edgespec train-exits`: train early-exit adapters by self-distillation on cached hidden states.

    edgespec train-exits --target qwen2.5-coder-1.5b --layers 16,20,22,24,26 --kind linear \
        --sequences 20 --steps 400 --out out/exits/linear
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from edgespec.cli.options import DEFAULT_EXIT_LAYERS, exit_layers
from edgespec.models.presets import DEFAULT_TARGET


def add_train_exits_parser(subparsers: Any) -> None:
    train = subparsers.add_parser(
        "train-exits",
        help="train early-exit adapters by self-distillation on cached hidden states",
        description="Train early-exit adapters by self-distillation (KL to the final layer) on hidden states of the "
        "target cached from ShareGPT; writes exits.json and exits.safetensors to --out.",
    )
    train.add_argument("--target", default=DEFAULT_TARGET, help="target preset, HF dir or .gguf")
    train.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="dtype the target runs in while caching",
    )
    train.add_argument(
        "--layers",
        type=exit_layers,
        default=exit_layers(DEFAULT_EXIT_LAYERS),
        help="exit layers, 1-based (default %(default)s)",
    )
    train.add_argument("--kind", default="linear", choices=("linear", "lowrank", "mlp"), help="adapter architecture")
    train.add_argument("--rank", type=int, default=0, help="inner width of lowrank / mlp adapters")
    train.add_argument(
        "--cache-dir",
        type=Path,
        default=Path("out/exits/cache-train"),
        help="hidden-state cache (built or resumed first)",
    )
    train.add_argument("--sequences", type=int, default=20, help="ShareGPT training sequences to cache")
    train.add_argument("--max-tokens", type=int, default=256, help="tokens per cached sequence")
    train.add_argument(
        "--continuation-every",
        type=int,
        default=0,
        help="every n-th source is the target's own greedy continuation of a ShareGPT prompt (0: none)",
    )
    train.add_argument("--continuation-tokens", type=int, default=128)
    train.add_argument(
        "--topk",
        type=int,
        default=64,
        help="final-layer top-k ids cached per position (the KL support)",
    )
    train.add_argument("--steps", type=int, default=400)
    train.add_argument("--batch-size", type=int, default=256)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument(
        "--sampled-tail",
        type=int,
        default=1024,
        help="uniformly sampled non-top-k ids per step for the KL tail",
    )
    train.add_argument("--ce-weight", type=float, default=0.0, help="weight of CE on the final argmax, added to the KL")
    train.add_argument(
        "--skip-positions",
        type=int,
        default=0,
        help="ignore each sequence's first n positions (e.g. a fixed system prompt)",
    )
    train.add_argument("--holdout-fraction", type=float, default=0.1)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--checkpoint-every", type=int, default=50)
    train.add_argument(
        "--storage-dtype",
        default="float16",
        choices=("float16", "float32"),
        help="dtype of the saved adapter weights",
    )
    train.add_argument("--threads", type=int, default=1, help="torch threads")
    train.add_argument(
        "--out",
        type=Path,
        required=True,
        help="directory for exits.json + exits.safetensors (and checkpoint.pt while training)",
    )
    train.set_defaults(handler=run_train_exits)


def run_train_exits(args: argparse.Namespace) -> int:
    import torch

    from edgespec.exits.hidden_cache import load_training_cache, read_manifest
    from edgespec.exits.training import CacheData, split_holdout, top1_agreement, train_exits, training_metadata
    from edgespec.models.loading import load_model
    from edgespec.models.target import decoder_parts

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    loaded = load_model(args.target, args.dtype)
    model = loaded.model
    _cache_hidden_states(args, loaded)
    cached_at = time.perf_counter()
    manifest = read_manifest(args.cache_dir)
    data = CacheData.from_tensors(load_training_cache(args.cache_dir), args.layers)
    train, holdout = split_holdout(data, args.holdout_fraction, args.skip_positions)
    config = _train_config(args)
    _, norm, head = decoder_parts(model)
    head_weight = head.weight
    heads, history = train_exits(config, train, norm, head_weight, args.out)
    trained_at = time.perf_counter()
    agreement = top1_agreement(heads, holdout, norm.float(), head_weight.float()) if holdout.size else {}
    heads.metadata = training_metadata(
        config,
        history,
        manifest,
        {
            "target": args.target,
            "heldout_top1_agreement": {str(k): round(v, 4) for k, v in agreement.items()},
            "heldout_positions": holdout.size,
            "train_positions": train.size,
            "storage_dtype": args.storage_dtype,
            "seconds": {"cache": round(cached_at - started, 1), "train": round(trained_at - cached_at, 1)},
        },
    )
    heads.save(args.out, dtype=getattr(torch, args.storage_dtype))
    agreement = heads.metadata["heldout_top1_agreement"]
    print(json.dumps({"out": str(args.out), "heldout_top1_agreement": agreement}, indent=2))
    return 0


def _cache_hidden_states(args: argparse.Namespace, loaded: Any) -> None:
    """Run the frozen target over the ShareGPT sources into --cache-dir (resuming what is cached),
    described in the manifest by the data, target and dtype. Training then reads the cache, not
    the model's forward."""
    from edgespec.exits.hidden_cache import build_training_cache, sharegpt_sources
    from edgespec.prompting import eos_token_ids

    model = loaded.model
    sources = sharegpt_sources(
        model,
        loaded.tokenizer,
        "train",
        args.max_tokens,
        args.continuation_every,
        args.continuation_tokens,
        eos_token_ids(model, loaded.tokenizer),
    )
    description = {
        "data": f"sharegpt train split, chat-templated, <= {args.max_tokens} tokens"
        + (
            f"; every {args.continuation_every}th: first user turn + target greedy continuation "
            f"({args.continuation_tokens} tokens)"
            if args.continuation_every
            else ""
        ),
        "target": args.target,
        "dtype": args.dtype,
    }
    build_training_cache(
        model,
        sources,
        args.cache_dir,
        args.layers,
        args.sequences,
        args.topk,
        description=description,
    )


def _train_config(args: argparse.Namespace) -> Any:
    """The `TrainConfig` the flags name (what `training_metadata` records with the exits)."""
    from edgespec.exits.training import TrainConfig

    return TrainConfig(
        layers=args.layers,
        kind=args.kind,
        rank=args.rank,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        sampled_tail=args.sampled_tail,
        ce_weight=args.ce_weight,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        holdout_fraction=args.holdout_fraction,
        skip_positions=args.skip_positions,
    )
