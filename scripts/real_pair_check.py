"""Real-pair check for the README: Qwen2.5-Coder 0.5B drafts for 1.5B, in process.

For a few MT-bench and HumanEval prompts, in bf16 and fp32: tokens per round and draft agreement
of greedy speculative decoding, and (fp32) whether the output equals `transformers` `generate`.
Writes results.jsonl and table.md under --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.data.prompt_sets import load_prompts
from edgespec.drivers.local_engine import LocalEngine
from edgespec.models.draft import DraftRuntime
from edgespec.models.loading import load_model
from edgespec.models.target import TargetRuntime
from edgespec.prompting import eos_token_ids, render_prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="qwen2.5-coder-1.5b")
    parser.add_argument("--draft", default="qwen2.5-coder-0.5b")
    parser.add_argument("--per-set", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--out", type=Path, default=Path("out/real-pair"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    prompts = [p for name in ("mtbench", "humaneval") for p in load_prompts(name, args.per_set)]
    rows = []
    with (args.out / "results.jsonl").open("w") as sink:
        for dtype in args.dtypes.split(","):
            target, draft = load_model(args.target, dtype), load_model(args.draft, dtype)
            engine = LocalEngine(TargetRuntime(target.model), DraftRuntime(draft.model))
            eos = eos_token_ids(target.model, target.tokenizer)
            for record in prompts:
                prompt_ids = render_prompt(target.tokenizer, record.messages)
                config = GenerationConfig(max_new_tokens=args.max_new_tokens, gamma=args.gamma, eos_ids=eos)
                result = engine.generate(prompt_ids, Mode.SD, config)
                row = {
                    "id": record.id,
                    "dtype": dtype,
                    "gamma": args.gamma,
                    "new_tokens": result.stats.new_tokens,
                    "rounds": result.stats.rounds,
                    "tokens_per_round": round(result.stats.tokens_per_round, 3),
                    "agreement": round(result.stats.acceptance_rate, 3),
                    "sd_s": round(result.stats.total_s, 2),
                }
                if dtype == "float32":
                    start = time.perf_counter()
                    reference = target.model.generate(
                        torch.tensor([prompt_ids]),
                        attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                        max_new_tokens=args.max_new_tokens,
                        do_sample=False,
                    )[0, len(prompt_ids) :].tolist()
                    row["generate_s"] = round(time.perf_counter() - start, 2)
                    row["equals_generate"] = reference == result.tokens
                rows.append(row)
                sink.write(json.dumps(row) + "\n")
                sink.flush()
                print(json.dumps(row), flush=True)
    (args.out / "table.md").write_text(render_table(rows))
    print(render_table(rows))


def render_table(rows: list[dict]) -> str:
    lines = [
        "| prompt | dtype | tokens | rounds | tokens/round | agreement | fp32 == generate |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        same = {True: "yes", False: "**no**"}.get(row.get("equals_generate"), "–")
        lines.append(
            f"| {row['id']} | {row['dtype']} | {row['new_tokens']} | {row['rounds']} | "
            f"{row['tokens_per_round']:.2f} | {row['agreement']:.2f} | {same} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
