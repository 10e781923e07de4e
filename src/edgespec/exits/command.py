"""``edgespec train-exits`` and ``edgespec eval-exits``.

    edgespec train-exits --target qwen2.5-coder-1.5b --layers 16,20,22,24,26 --kind linear \
        --sequences 20 --steps 400 --out out/exits/linear
    edgespec eval-exits --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
        --exits out/exits/linear --calibrate --report out/exits/report

``add_exit_commands(subparsers)`` registers both on an argparse sub-parser set.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).parent / "shipped"
DEFAULT_LAYERS = "16,20,22,24,26"


def default_exits_dir(target_name: str) -> Path | None:
    """The exits shipped in the package for a preset target, if any (``exits.json`` present)."""
    directory = SHIPPED_DIR / target_name
    return directory if (directory / "exits.json").is_file() else None


def _layers(text: str) -> tuple[int, ...]:
    try:
        layers = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"layers must be comma-separated integers, got {text!r}") from None
    if not layers:
        raise argparse.ArgumentTypeError("at least one exit layer is needed")
    return layers


def add_exit_commands(subparsers: Any) -> None:
    train = subparsers.add_parser("train-exits", help="train early-exit adapters by self-distillation on cached hidden states")
    train.add_argument("--target", default="qwen2.5-coder-1.5b", help="target preset, HF dir or .gguf")
    train.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="dtype the target runs in while caching")
    train.add_argument("--layers", type=_layers, default=_layers(DEFAULT_LAYERS), help="exit layers, 1-based (default %(default)s)")
    train.add_argument("--kind", default="linear", choices=("linear", "lowrank", "mlp"), help="adapter architecture")
    train.add_argument("--rank", type=int, default=0, help="inner width of lowrank / mlp adapters")
    train.add_argument("--cache-dir", type=Path, default=Path("out/exits/cache-train"), help="hidden-state cache (built or resumed first)")
    train.add_argument("--sequences", type=int, default=20, help="ShareGPT training sequences to cache")
    train.add_argument("--max-tokens", type=int, default=256, help="tokens per cached sequence")
    train.add_argument("--continuation-every", type=int, default=0, help="every n-th source is the target's own greedy continuation of a ShareGPT prompt (0: none)")
    train.add_argument("--continuation-tokens", type=int, default=128)
    train.add_argument("--topk", type=int, default=64, help="final-layer top-k ids cached per position (the KL support)")
    train.add_argument("--steps", type=int, default=400)
    train.add_argument("--batch-size", type=int, default=256)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument("--sampled-tail", type=int, default=1024, help="uniformly sampled non-top-k ids per step for the KL tail")
    train.add_argument("--ce-weight", type=float, default=0.0, help="weight of CE on the final argmax, added to the KL")
    train.add_argument("--skip-positions", type=int, default=0, help="ignore each sequence's first n positions (e.g. a fixed system prompt)")
    train.add_argument("--holdout-fraction", type=float, default=0.1)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--checkpoint-every", type=int, default=50)
    train.add_argument("--storage-dtype", default="float16", choices=("float16", "float32"), help="dtype of the saved adapter weights")
    train.add_argument("--threads", type=int, default=1, help="torch threads")
    train.add_argument("--out", type=Path, required=True, help="directory for exits.json + exits.safetensors (and checkpoint.pt while training)")
    train.set_defaults(handler=run_train_exits)

    evaluate = subparsers.add_parser("eval-exits", help="evaluate (and calibrate) exits on real speculative rounds")
    evaluate.add_argument("--target", default="qwen2.5-coder-1.5b")
    evaluate.add_argument("--draft", default="qwen2.5-coder-0.5b")
    evaluate.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    evaluate.add_argument("--exits", required=True, help="exit heads directory, or 'logit-lens' (identity adapters at --layers)")
    evaluate.add_argument("--layers", type=_layers, default=_layers(DEFAULT_LAYERS), help="layers recorded / used for logit-lens")
    evaluate.add_argument("--gamma", type=int, default=4)
    evaluate.add_argument("--max-new-tokens", type=int, default=48)
    evaluate.add_argument("--prompts-per-set", type=int, default=6, help="MT-bench and HumanEval prompts each (held out)")
    evaluate.add_argument("--calibration-prompts", type=int, default=8, help="held-out ShareGPT prompts for calibration")
    evaluate.add_argument("--rounds-dir", type=Path, default=Path("out/exits/rounds-benchmark"), help="recorded benchmark rounds (recorded or resumed first)")
    evaluate.add_argument("--calibration-rounds-dir", type=Path, default=Path("out/exits/rounds-calibration"))
    evaluate.add_argument("--calibrate", action="store_true", help="pick thresholds on the calibration rounds and write them into the exits' exits.json")
    evaluate.add_argument("--exit-vocab", choices=("candidates", "full"), default="candidates", help="what the exits score: the draft's top-k ids per token (as `serve` does by default) or the whole vocabulary")
    evaluate.add_argument("--threshold-rule", choices=("gain", "precision"), default="gain", help="gain: per mode, the threshold saving the most time (costs below); precision: the lowest with precision >= --min-precision")
    evaluate.add_argument("--costs", type=Path, default=None, help="hardware profile JSON (`simulate`'s) for the gain rule; default: this host's cached probe, else --verify-ms/--draft-ms")
    evaluate.add_argument("--verify-ms", type=float, default=333.0, help="verify time when no profile is found (this CPU's, bf16)")
    evaluate.add_argument("--draft-ms", type=float, default=38.8, help="edge draft time per token when no profile is found")
    evaluate.add_argument("--one-way-ms", type=float, default=25.0, help="link delay each way (wan: 25)")
    evaluate.add_argument("--min-precision", type=float, default=0.9)
    evaluate.add_argument("--min-count", type=int, default=10)
    evaluate.add_argument("--report", type=Path, default=Path("out/exits/report"), help="directory for eval.json and curves.png")
    evaluate.add_argument("--threads", type=int, default=1)
    evaluate.set_defaults(handler=run_eval_exits)


def _target_parts(model: Any) -> tuple[Any, Any]:
    from edgespec.models.target import decoder_parts

    _, norm, head = decoder_parts(model)
    return norm, head.weight


def run_train_exits(args: argparse.Namespace) -> int:
    import torch

    from edgespec.exits.hidden_cache import build_training_cache, load_training_cache, read_manifest, sharegpt_sources
    from edgespec.exits.training import CacheData, TrainConfig, split_holdout, top1_agreement, train_exits, training_metadata
    from edgespec.models.loading import load_model
    from edgespec.prompting import eos_token_ids

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    loaded = load_model(args.target, args.dtype)
    model = loaded.model
    sources = sharegpt_sources(
        model, loaded.tokenizer, "train", args.max_tokens, args.continuation_every, args.continuation_tokens, eos_token_ids(model, loaded.tokenizer)
    )
    description = {
        "data": f"sharegpt train split, chat-templated, <= {args.max_tokens} tokens"
        + (f"; every {args.continuation_every}th: first user turn + target greedy continuation ({args.continuation_tokens} tokens)" if args.continuation_every else ""),
        "target": args.target,
        "dtype": args.dtype,
    }
    manifest = build_training_cache(model, sources, args.cache_dir, args.layers, args.sequences, args.topk, description=description)
    cached_at = time.perf_counter()
    manifest = read_manifest(args.cache_dir)
    data = CacheData.from_tensors(load_training_cache(args.cache_dir), args.layers)
    train, holdout = split_holdout(data, args.holdout_fraction, args.skip_positions)
    config = TrainConfig(
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
    norm, head_weight = _target_parts(model)
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
    print(json.dumps({"out": str(args.out), "heldout_top1_agreement": heads.metadata["heldout_top1_agreement"]}, indent=2))
    return 0


def run_eval_exits(args: argparse.Namespace) -> int:
    import torch

    from edgespec.exits.calibration import calibration_rule, pick_threshold
    from edgespec.exits.evaluation import benchmark_prompts, calibration_prompts, exit_outcomes, guess_outcomes, hint_outcomes, plot_curves, summarize
    from edgespec.exits.gain import gain_rule, pick_threshold_by_gain
    from edgespec.models.exit_heads import ExitHeads
    from edgespec.exits.hidden_cache import load_rounds, read_manifest, record_rounds
    from edgespec.models.loading import load_model
    from edgespec.prompting import eos_token_ids

    torch.set_num_threads(args.threads)
    target = load_model(args.target, args.dtype)
    hidden_size = int(target.model.config.hidden_size)
    heads = ExitHeads.logit_lens(args.layers, hidden_size) if args.exits == "logit-lens" else ExitHeads.load(args.exits)
    heads = heads.float().eval()

    jobs = [(args.rounds_dir, benchmark_prompts(target.tokenizer, args.prompts_per_set), 2 * args.prompts_per_set, "mtbench + humaneval")]
    if args.calibrate:
        jobs.append((args.calibration_rounds_dir, calibration_prompts(target.tokenizer, args.calibration_prompts), args.calibration_prompts, "sharegpt calibration split"))
    draft = None
    for directory, prompts, count, what in jobs:
        try:
            have = read_manifest(directory)
            complete = len(have["shards"]) >= count and set(heads.layers) <= set(have["layers"])
        except FileNotFoundError:
            complete = False
        if not complete:
            draft = draft or load_model(args.draft, args.dtype)
            record_rounds(
                target.model, draft.model, prompts, directory, sorted(set(heads.layers) | set(args.layers)), count, args.gamma, args.max_new_tokens,
                eos_token_ids(target.model, target.tokenizer), {"prompts": what, "target": args.target, "draft": args.draft},
            )

    norm, head_weight = _target_parts(target.model)
    norm, head_weight = norm.float(), head_weight.float()
    candidates = args.exit_vocab == "candidates"
    report: dict[str, Any] = {"exits": str(args.exits), "target": args.target, "draft": args.draft, "gamma": args.gamma, "greedy": True, "exit_vocab": args.exit_vocab}
    thresholds = {s.layer: s.threshold for s in heads.specs}
    tables = {}
    if args.calibrate:
        calibration_rounds = load_rounds(args.calibration_rounds_dir)
        calibration = exit_outcomes(heads, calibration_rounds, norm, head_weight, candidates=candidates)
        if args.threshold_rule == "gain":
            costs = _round_costs(args, int(target.model.config.num_hidden_layers))
            by_mode = {
                mode: {
                    layer: pick_threshold_by_gain(result["confidence"], result["correct"], result["streams"], costs.hit_saving_s(layer, mode == "pipelined"), costs.miss_cost_s(), args.min_count)
                    for layer, result in calibration.items()
                }
                for mode in ("pipelined", "predraft")
            }
            # The server streams at one threshold per exit: the pipelined mode's (the best pre-draft mode).
            thresholds = {layer: choice[0] for layer, choice in by_mode["pipelined"].items()}
            report["calibration_rule"] = gain_rule(costs, args.min_count)
            report["thresholds_by_mode"] = {
                mode: {str(layer): {"threshold": t, "saving_ms_per_round": round(s * 1000, 2), "hit_saving_ms": round(costs.hit_saving_s(layer, mode == "pipelined") * 1000, 1)} for layer, (t, s) in choice.items()}
                for mode, choice in by_mode.items()
            }
        else:
            # Over the verdicts the exit can stream (a candidate exit: its rejections only).
            thresholds = {
                layer: pick_threshold(result["confidence"][result["streams"]], result["correct"][result["streams"]], args.min_precision, args.min_count)
                for layer, result in calibration.items()
            }
            report["calibration_rule"] = calibration_rule(args.min_precision, args.min_count)
        tables["calibration (held-out ShareGPT)"] = summarize(calibration, thresholds)
        report["calibration"] = {"table": tables["calibration (held-out ShareGPT)"], "hints": hint_outcomes(calibration, thresholds), "guess": guess_outcomes(calibration_rounds)}
    benchmark_rounds = load_rounds(args.rounds_dir)
    benchmark = exit_outcomes(heads, benchmark_rounds, norm, head_weight, candidates=candidates)
    tables["benchmark (MT-bench + HumanEval)"] = summarize(benchmark, thresholds)
    report["benchmark"] = {"table": tables["benchmark (MT-bench + HumanEval)"], "hints": hint_outcomes(benchmark, thresholds), "guess": guess_outcomes(benchmark_rounds)}
    report["thresholds"] = {str(k): v for k, v in thresholds.items()}
    if args.calibrate and args.exits != "logit-lens":
        compact = {
            layer: {key: entry[key] for key in ("top1_agreement", "verdict_match", "right_rejections", "right_rejections_streamed", "threshold", "precision", "coverage", "rounds")}
            for layer, entry in report["benchmark"]["table"].items()
        }
        calibrated = heads.with_thresholds(thresholds)
        calibrated.metadata = {
            **heads.metadata,
            "calibration": {
                "exit_vocab": args.exit_vocab,
                "thresholds_by_mode": report.get("thresholds_by_mode"),
                "rule": report["calibration_rule"],
                "thresholds": {str(k): v for k, v in thresholds.items()},
                "rounds": int(next(iter(calibration.values()))["correct"].numel()),
            },
            "benchmark": {"prompts": f"mtbench[:{args.prompts_per_set}] + humaneval[:{args.prompts_per_set}]", "gamma": args.gamma, "per_exit": compact, "hints": report["benchmark"]["hints"]},
        }
        calibrated.save(args.exits, dtype=getattr(torch, heads.metadata.get("storage_dtype", "float32")))
    args.report.mkdir(parents=True, exist_ok=True)
    (args.report / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_curves(tables, str(args.report / "curves.png"))
    print(format_table(report))
    return 0


def _round_costs(args: argparse.Namespace, num_layers: int) -> Any:
    """The gain rule's costs: a hardware profile's verify (γ + 1 rows) and draft per token."""
    from edgespec.exits.gain import RoundCosts
    from edgespec.drivers.cost_profile import HardwareProfile
    from edgespec.sim.probe import cache_path

    path = args.costs
    if path is None:
        cached = cache_path(args.target, args.draft, "llamacpp", args.dtype)
        path = cached if cached.is_file() else None
    if path is not None:
        profile = HardwareProfile.load(path)
        return RoundCosts(profile.forward_s(args.gamma + 1), profile.draft_ms_per_token / 1000, args.one_way_ms / 1000, args.gamma, num_layers)
    return RoundCosts(args.verify_ms / 1000, args.draft_ms / 1000, args.one_way_ms / 1000, args.gamma, num_layers)


def format_table(report: dict[str, Any]) -> str:
    lines = []
    for name in ("calibration", "benchmark"):
        if name not in report:
            continue
        lines.append(f"## {name}: hints {report[name]['hints']}; final verdicts {report[name].get('guess')}")
        lines.append("| exit | top-1 agreement | verdict == final | right rejections (streamed) | threshold | precision | coverage |")
        lines.append("|---|---|---|---|---|---|---|")
        for layer, entry in report[name]["table"].items():
            precision = "–" if entry["precision"] is None else f"{entry['precision']:.2f}"
            lines.append(
                f"| {layer} | {entry['top1_agreement']:.3f} | {entry['verdict_match']:.3f} | {entry['right_rejections']} ({entry['right_rejections_streamed']}) "
                f"| {entry['threshold']:.2f} | {precision} | {entry['coverage']:.3f} |"
            )
    if "thresholds_by_mode" in report:
        lines.append(f"thresholds by mode: {json.dumps(report['thresholds_by_mode'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (``python -m edgespec.exits.command train-exits ...``) until the
    main CLI registers these commands."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="edgespec-exits")
    add_exit_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
