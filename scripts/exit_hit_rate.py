"""Pre-draft hit rate of the exits in the real in-process ``sd-ee`` engine (issue: early exits).

Runs greedy speculative decoding with early exits (Qwen2.5-Coder 0.5B drafting for 1.5B) on the
held-out MT-bench and HumanEval prompts and counts, per round, whether the streamed early verdict
(the deepest exit whose confidence cleared its threshold) equalled the final verdict. With
``--max-layer L`` only exits at or before layer L are attached: the hit rate "from exits <= L".
``--check-generate`` also compares each output with ``transformers`` ``generate``.
Writes results.jsonl and summary.json under --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from edgespec.core.config import GenerationConfig
from edgespec.drivers.local_engine import LocalEngine
from edgespec.core.modes import Mode
from edgespec.models.exit_choice import default_exits_dir
from edgespec.exits.evaluation import benchmark_prompts
from edgespec.exits.heads import ExitHeads
from edgespec.models.draft import DraftRuntime
from edgespec.models.loading import load_model
from edgespec.models.target import TargetRuntime
from edgespec.prompting import eos_token_ids


def exits_up_to(heads: ExitHeads, max_layer: int | None) -> ExitHeads:
    keep = [layer for layer in heads.layers if max_layer is None or layer <= max_layer]
    if not keep:
        raise SystemExit(f"no exit at or before layer {max_layer} in {list(heads.layers)}")
    return heads.subset(keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="qwen2.5-coder-1.5b")
    parser.add_argument("--draft", default="qwen2.5-coder-0.5b")
    parser.add_argument("--exits", type=Path, default=None, help="exit heads directory (default: the shipped ones)")
    parser.add_argument("--max-layer", type=int, default=None, help="attach only exits at or before this layer")
    parser.add_argument("--per-set", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--check-generate", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("out/exit-hit-rate"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    target, draft = load_model(args.target, "float32"), load_model(args.draft, "float32")
    directory = args.exits or default_exits_dir(args.target)
    if directory is None:
        raise SystemExit(f"no shipped exits for {args.target}; pass --exits")
    heads = exits_up_to(ExitHeads.load(directory), args.max_layer)
    engine = LocalEngine(TargetRuntime(target.model, heads), DraftRuntime(draft.model))
    eos = eos_token_ids(target.model, target.tokenizer)
    totals = {"rounds": 0, "hits": 0, "misses": 0, "no_hint": 0, "new_tokens": 0, "equals_generate": 0, "checked": 0}
    per_exit: dict[str, dict[str, int]] = {}
    with (args.out / "results.jsonl").open("w") as sink:
        # The same held-out prompts eval-exits records its rounds on, so both hit rates compare.
        for prompt_id, prompt_ids in benchmark_prompts(target.tokenizer, args.per_set):
            config = GenerationConfig(max_new_tokens=args.max_new_tokens, gamma=args.gamma, eos_ids=eos)
            result = engine.generate(prompt_ids, Mode.SD_EE, config)
            stats = result.stats
            row = {"id": prompt_id, "rounds": stats.rounds, "hits": stats.hits, "misses": stats.misses, "no_hint": stats.no_hint, "new_tokens": stats.new_tokens, "per_exit": stats.per_exit}
            if args.check_generate:
                reference = target.model.generate(
                    torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long), max_new_tokens=args.max_new_tokens, do_sample=False
                )[0, len(prompt_ids) :].tolist()
                row["equals_generate"] = result.tokens == reference
                totals["checked"] += 1
                totals["equals_generate"] += int(row["equals_generate"])
            for key in ("rounds", "hits", "misses", "no_hint", "new_tokens"):
                totals[key] += row[key]
            for layer, entry in stats.per_exit.items():
                into = per_exit.setdefault(layer, dict.fromkeys(entry, 0))
                for key, value in entry.items():
                    into[key] += value
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            print(json.dumps({k: v for k, v in row.items() if k != "per_exit"}), flush=True)
    summary = {
        "exits": str(directory),
        "layers": list(heads.layers),
        "thresholds": {str(s.layer): s.threshold for s in heads.specs},
        "prompts": f"mtbench[:{args.per_set}] + humaneval[:{args.per_set}]",
        "gamma": args.gamma,
        "max_new_tokens": args.max_new_tokens,
        **totals,
        "hit_rate": round(totals["hits"] / max(totals["rounds"], 1), 3),
        "hint_precision": round(totals["hits"] / max(totals["hits"] + totals["misses"], 1), 3),
        "per_exit": per_exit,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
