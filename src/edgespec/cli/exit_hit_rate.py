"""`edgespec exit-hit-rate`: the exits' pre-draft hit rate in the real in-process ``sd-ee``
engine on the held-out MT-bench and HumanEval prompts (``edgespec.exits.hit_rate``), the target's
shipped exits by default. Writes results.jsonl and summary.json under --out.

    edgespec exit-hit-rate --per-set 6 --max-new-tokens 48 --check-generate --threads 2 --out out/exit-hit-rate
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_exit_hit_rate_parser(commands: Any) -> None:
    """Register `exit-hit-rate` on the top-level subparsers."""
    parser = commands.add_parser(
        "exit-hit-rate",
        help="pre-draft hit rate of the exits in the in-process sd-ee engine (greedy, fp32)",
        description="How often an early verdict equals the final one on real rounds, per exit layer, in the "
        "in-process engine (greedy, fp32); outputs are checked equal to the target's own greedy decoding.",
    )
    parser.add_argument("--target", default="qwen2.5-coder-1.5b")
    parser.add_argument("--draft", default="qwen2.5-coder-0.5b")
    parser.add_argument("--exits", type=Path, default=None, help="exit heads directory (default: the shipped ones)")
    parser.add_argument("--max-layer", type=int, default=None, help="attach only exits at or before this layer")
    parser.add_argument("--per-set", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--check-generate", action="store_true", help="also compare each output with `generate`")
    parser.add_argument("--out", type=Path, default=Path("out/exit-hit-rate"))
    parser.set_defaults(handler=run_exit_hit_rate)


def run_exit_hit_rate(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from edgespec.drivers.local_engine import LocalEngine
    from edgespec.exits.evaluation import benchmark_prompts
    from edgespec.exits.heads import ExitHeads
    from edgespec.exits.hit_rate import HitRateConfig, exits_up_to, generate_reference, measure_hit_rate
    from edgespec.models.draft import DraftRuntime
    from edgespec.models.exit_choice import default_exits_dir
    from edgespec.models.loading import load_model
    from edgespec.models.target import TargetRuntime
    from edgespec.prompting import eos_token_ids

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    target, draft = load_model(args.target, "float32"), load_model(args.draft, "float32")
    directory = args.exits or default_exits_dir(args.target)
    if directory is None:
        raise ValueError(f"no shipped exits for {args.target}; pass --exits")
    heads = exits_up_to(ExitHeads.load(directory), args.max_layer)
    engine = LocalEngine(TargetRuntime(target.model, heads), DraftRuntime(draft.model))
    config = HitRateConfig(args.max_new_tokens, args.gamma, eos_token_ids(target.model, target.tokenizer))
    reference = generate_reference(target.model, args.max_new_tokens) if args.check_generate else None
    # The same held-out prompts eval-exits records its rounds on, so both hit rates compare.
    prompts = list(benchmark_prompts(target.tokenizer, args.per_set))
    with (
        (args.out / "results.jsonl").open("w") as sink,
        tqdm(total=len(prompts), desc="sd-ee", unit="prompt", disable=not sys.stderr.isatty(), leave=False) as bar,
    ):

        def record(row: dict[str, Any]) -> None:
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            bar.write(json.dumps({k: v for k, v in row.items() if k != "per_exit"}))
            bar.update()

        totals = measure_hit_rate(engine, prompts, config, reference=reference, on_row=record)
    summary = {
        "exits": str(directory),
        "layers": list(heads.layers),
        "thresholds": {str(s.layer): s.threshold for s in heads.specs},
        "prompts": f"mtbench[:{args.per_set}] + humaneval[:{args.per_set}]",
        "gamma": args.gamma,
        "max_new_tokens": args.max_new_tokens,
        **totals,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0
