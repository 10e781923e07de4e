"""`edgespec eval-exits`: evaluate (and calibrate) exits on real speculative rounds.

    edgespec eval-exits --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
        --exits out/exits/linear --calibrate --report out/exits/report
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgespec.cli.options import DEFAULT_EXIT_LAYERS, exit_layers
from edgespec.models.presets import DEFAULT_DRAFT, DEFAULT_TARGET

BENCHMARK_TABLE = "benchmark (MT-bench + HumanEval)"
CALIBRATION_TABLE = "calibration (held-out ShareGPT)"
# What a calibration writes into exits.json of each exit's benchmark row.
COMPACT_KEYS = (
    "top1_agreement",
    "verdict_match",
    "right_rejections",
    "right_rejections_streamed",
    "threshold",
    "precision",
    "coverage",
    "rounds",
)


def add_eval_exits_parser(subparsers: Any) -> None:
    """The `eval-exits` subcommand and its flags, with `run_eval_exits` as handler.

    Long because it declares every flag of the command, one statement each."""
    evaluate = subparsers.add_parser(
        "eval-exits",
        help="evaluate (and calibrate) exits on real speculative rounds",
        description="Evaluate exits on recorded speculative rounds (MT-bench and HumanEval); with --calibrate, pick "
        "thresholds on held-out ShareGPT rounds and write them into the exits' exits.json.",
    )
    evaluate.add_argument("--target", default=DEFAULT_TARGET)
    evaluate.add_argument("--draft", default=DEFAULT_DRAFT)
    evaluate.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    evaluate.add_argument(
        "--exits",
        required=True,
        help="exit heads directory, or 'logit-lens' (identity adapters at --layers)",
    )
    evaluate.add_argument(
        "--layers",
        type=exit_layers,
        default=exit_layers(DEFAULT_EXIT_LAYERS),
        help="layers recorded / used for logit-lens",
    )
    evaluate.add_argument("--gamma", type=int, default=4)
    evaluate.add_argument("--max-new-tokens", type=int, default=48)
    evaluate.add_argument(
        "--prompts-per-set",
        type=int,
        default=6,
        help="MT-bench and HumanEval prompts each (held out)",
    )
    evaluate.add_argument(
        "--calibration-prompts",
        type=int,
        default=8,
        help="held-out ShareGPT prompts for calibration",
    )
    evaluate.add_argument(
        "--rounds-dir",
        type=Path,
        default=Path("out/exits/rounds-benchmark"),
        help="recorded benchmark rounds (recorded or resumed first)",
    )
    evaluate.add_argument("--calibration-rounds-dir", type=Path, default=Path("out/exits/rounds-calibration"))
    evaluate.add_argument(
        "--calibrate",
        action="store_true",
        help="pick thresholds on the calibration rounds and write them into the exits' exits.json",
    )
    evaluate.add_argument(
        "--exit-vocab",
        choices=("candidates", "full"),
        default="candidates",
        help="what the exits score: the draft's top-k ids per token (as `serve` does by default) or the whole "
        "vocabulary",
    )
    evaluate.add_argument(
        "--threshold-rule",
        choices=("gain", "precision"),
        default="gain",
        help="gain: per mode, the threshold saving the most time (costs below); precision: the lowest with precision "
        ">= --min-precision",
    )
    evaluate.add_argument(
        "--costs",
        type=Path,
        default=None,
        help="hardware profile JSON (`simulate`'s) for the gain rule; default: this host's cached probe, else "
        "--verify-ms/--draft-ms",
    )
    evaluate.add_argument(
        "--verify-ms",
        type=float,
        default=333.0,
        help="verify time when no profile is found (this CPU's, bf16)",
    )
    evaluate.add_argument(
        "--draft-ms",
        type=float,
        default=38.8,
        help="edge draft time per token when no profile is found",
    )
    evaluate.add_argument("--one-way-ms", type=float, default=25.0, help="link delay each way (wan: 25)")
    evaluate.add_argument("--min-precision", type=float, default=0.9)
    evaluate.add_argument("--min-count", type=int, default=10)
    evaluate.add_argument(
        "--report",
        type=Path,
        default=Path("out/exits/report"),
        help="directory for eval.json and curves.png",
    )
    evaluate.add_argument("--threads", type=int, default=1)
    evaluate.set_defaults(handler=run_eval_exits)


def run_eval_exits(args: argparse.Namespace) -> int:
    import torch

    from edgespec.exits.evaluation import exit_outcomes, guess_outcomes, hint_outcomes, plot_curves, summarize
    from edgespec.exits.recorded_rounds import load_rounds
    from edgespec.models.exit_heads import ExitHeads
    from edgespec.models.loading import load_model
    from edgespec.models.target import decoder_parts

    torch.set_num_threads(args.threads)
    target = load_model(args.target, args.dtype)
    hidden_size = int(target.model.config.hidden_size)
    heads = ExitHeads.logit_lens(args.layers, hidden_size) if args.exits == "logit-lens" else ExitHeads.load(args.exits)
    heads = heads.float().eval()
    _record_missing_rounds(args, target, heads)

    _, norm, head = decoder_parts(target.model)
    norm, head_weight = norm.float(), head.weight.float()
    candidates = args.exit_vocab == "candidates"
    report: dict[str, Any] = {
        "exits": str(args.exits),
        "target": args.target,
        "draft": args.draft,
        "gamma": args.gamma,
        "greedy": True,
        "exit_vocab": args.exit_vocab,
    }
    thresholds = {s.layer: s.threshold for s in heads.specs}
    tables = {}
    calibration = None
    if args.calibrate:
        calibration_rounds = load_rounds(args.calibration_rounds_dir)
        calibration = exit_outcomes(heads, calibration_rounds, norm, head_weight, candidates=candidates)
        thresholds = _calibrated_thresholds(args, calibration, int(target.model.config.num_hidden_layers), report)
        tables[CALIBRATION_TABLE] = summarize(calibration, thresholds)
        report["calibration"] = {
            "table": tables[CALIBRATION_TABLE],
            "hints": hint_outcomes(calibration, thresholds),
            "guess": guess_outcomes(calibration_rounds),
        }
    benchmark_rounds = load_rounds(args.rounds_dir)
    benchmark = exit_outcomes(heads, benchmark_rounds, norm, head_weight, candidates=candidates)
    tables[BENCHMARK_TABLE] = summarize(benchmark, thresholds)
    report["benchmark"] = {
        "table": tables[BENCHMARK_TABLE],
        "hints": hint_outcomes(benchmark, thresholds),
        "guess": guess_outcomes(benchmark_rounds),
    }
    report["thresholds"] = {str(k): v for k, v in thresholds.items()}
    if args.calibrate and args.exits != "logit-lens":
        _save_calibrated(args, heads, thresholds, calibration, report)
    args.report.mkdir(parents=True, exist_ok=True)
    (args.report / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_curves(tables, str(args.report / "curves.png"))
    print(format_table(report))
    return 0


def _record_missing_rounds(args: argparse.Namespace, target: Any, heads: Any) -> None:
    """Record (or resume) the benchmark rounds, and with --calibrate the calibration rounds."""
    from edgespec.exits.evaluation import benchmark_prompts, calibration_prompts
    from edgespec.exits.hidden_cache import read_manifest
    from edgespec.exits.recorded_rounds import record_rounds
    from edgespec.models.loading import load_model
    from edgespec.prompting import eos_token_ids

    benchmark = benchmark_prompts(target.tokenizer, args.prompts_per_set)
    jobs = [(args.rounds_dir, benchmark, 2 * args.prompts_per_set, "mtbench + humaneval")]
    if args.calibrate:
        calibration = calibration_prompts(target.tokenizer, args.calibration_prompts)
        jobs.append((args.calibration_rounds_dir, calibration, args.calibration_prompts, "sharegpt calibration split"))
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
                target.model,
                draft.model,
                prompts,
                directory,
                sorted(set(heads.layers) | set(args.layers)),
                count,
                args.gamma,
                args.max_new_tokens,
                eos_token_ids(target.model, target.tokenizer),
                {"prompts": what, "target": args.target, "draft": args.draft},
            )


def _calibrated_thresholds(
    args: argparse.Namespace, calibration: dict[int, Any], num_layers: int, report: dict[str, Any]
) -> dict[int, float]:
    """Each exit's threshold by --threshold-rule; the rule (and per-mode choices) go into ``report``."""
    from edgespec.exits.calibration import calibration_rule, pick_threshold
    from edgespec.exits.gain import gain_rule, pick_threshold_by_gain

    if args.threshold_rule == "gain":
        costs = _round_costs(args, num_layers)
        by_mode = {
            mode: {
                layer: pick_threshold_by_gain(
                    result["confidence"],
                    result["correct"],
                    result["streams"],
                    costs.hit_saving_s(layer, mode == "pipelined"),
                    costs.miss_cost_s(),
                    args.min_count,
                )
                for layer, result in calibration.items()
            }
            for mode in ("pipelined", "predraft")
        }
        report["calibration_rule"] = gain_rule(costs, args.min_count)
        report["thresholds_by_mode"] = {
            mode: {
                str(layer): {
                    "threshold": t,
                    "saving_ms_per_round": round(s * 1000, 2),
                    "hit_saving_ms": round(costs.hit_saving_s(layer, mode == "pipelined") * 1000, 1),
                }
                for layer, (t, s) in choice.items()
            }
            for mode, choice in by_mode.items()
        }
        # The server streams at one threshold per exit: the pipelined mode's (the best pre-draft mode).
        return {layer: choice[0] for layer, choice in by_mode["pipelined"].items()}
    report["calibration_rule"] = calibration_rule(args.min_precision, args.min_count)
    # Over the verdicts the exit can stream (a candidate exit: its rejections only).
    return {
        layer: pick_threshold(
            result["confidence"][result["streams"]],
            result["correct"][result["streams"]],
            args.min_precision,
            args.min_count,
        )
        for layer, result in calibration.items()
    }


def _save_calibrated(
    args: argparse.Namespace, heads: Any, thresholds: dict[int, float], calibration: Any, report: dict[str, Any]
) -> None:
    """Write the thresholds, and what chose them, into the exits' own exits.json."""
    import torch

    compact = {
        layer: {key: entry[key] for key in COMPACT_KEYS} for layer, entry in report["benchmark"]["table"].items()
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
        "benchmark": {
            "prompts": f"mtbench[:{args.prompts_per_set}] + humaneval[:{args.prompts_per_set}]",
            "gamma": args.gamma,
            "per_exit": compact,
            "hints": report["benchmark"]["hints"],
        },
    }
    calibrated.save(args.exits, dtype=getattr(torch, heads.metadata.get("storage_dtype", "float32")))


def _round_costs(args: argparse.Namespace, num_layers: int) -> Any:
    """The gain rule's costs: a hardware profile's verify (γ + 1 rows) and draft per token."""
    from edgespec.drivers.cost_profile import HardwareProfile
    from edgespec.exits.gain import RoundCosts
    from edgespec.sim.probe import cache_path

    path = args.costs
    if path is None:
        cached = cache_path(args.target, args.draft, "llamacpp", args.dtype)
        path = cached if cached.is_file() else None
    if path is not None:
        profile = HardwareProfile.load(path)
        return RoundCosts(
            profile.forward_s(args.gamma + 1),
            profile.draft_ms_per_token / 1000,
            args.one_way_ms / 1000,
            args.gamma,
            num_layers,
        )
    return RoundCosts(args.verify_ms / 1000, args.draft_ms / 1000, args.one_way_ms / 1000, args.gamma, num_layers)


def format_table(report: dict[str, Any]) -> str:
    lines = []
    for name in ("calibration", "benchmark"):
        if name not in report:
            continue
        lines.append(f"## {name}: hints {report[name]['hints']}; final verdicts {report[name].get('guess')}")
        lines.append(
            "| exit | top-1 agreement | verdict == final | right rejections (streamed) | threshold | precision | "
            "coverage |",
        )
        lines.append("|---|---|---|---|---|---|---|")
        for layer, entry in report[name]["table"].items():
            precision = "–" if entry["precision"] is None else f"{entry['precision']:.2f}"
            lines.append(
                f"| {layer} | {entry['top1_agreement']:.3f} | {entry['verdict_match']:.3f} | "
                f"{entry['right_rejections']} ({entry['right_rejections_streamed']}) | {entry['threshold']:.2f} | "
                f"{precision} | {entry['coverage']:.3f} |"
            )
    if "thresholds_by_mode" in report:
        lines.append(f"thresholds by mode: {json.dumps(report['thresholds_by_mode'])}")
    return "\n".join(lines)
