"""Real-model network check for the README: the Qwen pair in fp32 over the `wan` link, one
MT-bench and one HumanEval prompt, every mode; each output compared with `transformers`
`generate` on the target (the oracle), and each mode's stats line.
"""

from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path

import torch

from edgespec.bench.processes import deploy, run_client
from edgespec.data.prompt_sets import load_prompts
from edgespec.models.loading import load_model, load_tokenizer
from edgespec.prompting import render_prompt

MODES = ["cloud-ar", "sd", "sd-ee", "sd-ee-predraft", "sd-ee-pipelined", "edge-only"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="qwen2.5-coder-1.5b")
    parser.add_argument("--draft", default="qwen2.5-coder-0.5b")
    parser.add_argument("--profile", default="wan")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=Path("out/real-network"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    prompts = [load_prompts("mtbench", 1)[0], load_prompts("humaneval", 1)[0]]

    oracle = {}
    target = load_model(args.target, "float32")
    draft_tokenizer = load_tokenizer(args.draft)
    for record in prompts:
        ids = render_prompt(target.tokenizer, record.messages)
        assert ids == render_prompt(draft_tokenizer, record.messages), "draft and target tokenizers disagree"
        with torch.inference_mode():
            out = target.model.generate(
                torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), max_new_tokens=args.max_new_tokens, do_sample=False
            )
        oracle[record.id] = out[0, len(ids) :].tolist()
    del target
    gc.collect()

    rows = []
    with deploy(args.target, "float32", args.profile, log_dir=str(args.out)) as deployment:
        address = f"127.0.0.1:{deployment.client_port}"
        common = ["--draft", args.draft, "--dtype", "float32", "--max-new-tokens", str(args.max_new_tokens)]
        run_client(address, ["--draft", args.draft, "--dtype", "float32", "--max-new-tokens", "4", "warm-up"])
        for record in prompts:
            text = record.messages[0]["content"]
            for mode in MODES:
                result = run_client(address, [*common, "--mode", mode, text])
                stats = result["stats"]
                row = {
                    "prompt": record.id,
                    "mode": mode,
                    "equals_generate": result["tokens"] == oracle[record.id],
                    "tokens": stats["new_tokens"],
                    "tokens_per_s": round(stats["tokens_per_s"], 3),
                    "ttft_ms": round(1000 * stats["ttft_s"]),
                    "rounds": stats["rounds"],
                    "tokens_per_round": round(stats["tokens_per_round"], 2),
                    "hits": stats["hits"],
                    "misses": stats["misses"],
                    "no_hint": stats["no_hint"],
                    "pipelined": stats["pipelined"],
                    "bytes_sent": stats["bytes_sent"],
                    "bytes_received": stats["bytes_received"],
                    "draft_s": round(stats["draft_s"], 2),
                    "wait_s": round(stats["wait_s"], 2),
                    "total_s": round(stats["total_s"], 2),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    (args.out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = render(rows)
    (args.out / "table.md").write_text(table)
    print(table)


def render(rows: list[dict]) -> str:
    lines = [
        "| prompt | mode | == generate | tok/s | TTFT ms | rounds | tok/round | hits / misses / no hint | pipelined | bytes up / down | draft s | wait s | total s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        same = "yes" if r["equals_generate"] else ("no (not lossless by design)" if r["mode"] == "edge-only" else "**NO**")
        lines.append(
            f"| {r['prompt']} | {r['mode']} | {same} | {r['tokens_per_s']:.2f} | {r['ttft_ms']} | {r['rounds']} | {r['tokens_per_round']:.2f} | "
            f"{r['hits']} / {r['misses']} / {r['no_hint']} | {r['pipelined']} | {r['bytes_sent']} / {r['bytes_received']} | {r['draft_s']} | {r['wait_s']} | {r['total_s']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
