"""Structured output's speed on the real pair, in process: each JSON extraction prompt of
edgespec.data.extraction_prompts answered in `sd` (or --modes) twice, held to its schema and as
free text, with the same draft, γ and token limit.

Per run: tokens, tokens/s (whole generation and after the first token), tokens per round,
acceptance, and each side's grammar work (``edge_mask_s``, ``server_mask_s``) as a share of that
side's compute (drafting on the edge, verifying on the server). Writes results.jsonl and
table.md under --out. The in-process engine charges each side its measured compute on a virtual
clock with the --profile link's delay, as `tests/e2e` runs the pair.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from edgespec.core.config import GenerationConfig
from edgespec.core.grammar import Grammar
from edgespec.core.modes import Mode
from edgespec.data.extraction_prompts import CASES, messages
from edgespec.decoding.grammar import tokenizer_fingerprint
from edgespec.drivers.local_engine import LocalEngine
from edgespec.drivers.virtual_devices import Link
from edgespec.link import resolve_profile
from edgespec.models.draft import DraftRuntime
from edgespec.models.loading import load_model
from edgespec.models.target import TargetRuntime
from edgespec.prompting import eos_token_ids, render_prompt


def run_once(engine: LocalEngine, tokenizer: Any, prompt_ids: list[int], mode: Mode, config: GenerationConfig) -> dict:
    result = engine.generate(prompt_ids, mode, config)
    stats = result.stats
    text = tokenizer.decode(result.tokens, skip_special_tokens=True)
    try:
        json.loads(text)
        parses = True
    except ValueError:
        parses = False
    return {
        "tokens": stats.new_tokens,
        "total_s": stats.total_s,
        "ttft_s": stats.ttft_s,
        "rounds": stats.rounds,
        "tokens_per_round": stats.tokens_per_round,
        "acceptance": stats.acceptance_rate,
        "draft_s": stats.draft_s,
        "verify_s": stats.server_verify_s,
        "edge_mask_s": stats.edge_mask_s,
        "server_mask_s": stats.server_mask_s,
        "parses_as_json": parses,
        "text": text,
    }


def summarise(rows: list[dict]) -> dict:
    """Totals over the prompts: rates from summed tokens and seconds, shares from summed seconds."""
    tokens = sum(r["tokens"] for r in rows)
    total = sum(r["total_s"] for r in rows)
    after_first = sum(r["total_s"] - r["ttft_s"] for r in rows)
    rounds = sum(r["rounds"] for r in rows)
    return {
        "tokens": tokens,
        "tokens_per_s": tokens / total,
        "tokens_per_s_after_first": (tokens - len(rows)) / after_first,
        "tokens_per_round": tokens / rounds if rounds else 0.0,
        "acceptance": sum(r["acceptance"] for r in rows) / len(rows),
        "edge_mask_share": sum(r["edge_mask_s"] for r in rows) / max(1e-9, sum(r["draft_s"] for r in rows)),
        "server_mask_share": sum(r["server_mask_s"] for r in rows) / max(1e-9, sum(r["verify_s"] for r in rows)),
        "edge_mask_ms_per_round": 1000 * sum(r["edge_mask_s"] for r in rows) / max(1, rounds),
        "server_mask_ms_per_round": 1000 * sum(r["server_mask_s"] for r in rows) / max(1, rounds),
        "valid_json": sum(r["parses_as_json"] for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="qwen2.5-coder-1.5b")
    parser.add_argument("--draft", default="qwen2.5-coder-0.5b")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--modes", default="sd")
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--profile", default="wan", help="the link whose delay the in-process engine charges")
    parser.add_argument("--out", type=Path, default=Path("out/structured-output"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    target = load_model(args.target, args.dtype)
    draft = load_model(args.draft, args.dtype)
    tokenizer = target.tokenizer
    link = Link(one_way_s=resolve_profile(args.profile, {}).one_way_delay_ms / 1000)
    engine = LocalEngine(TargetRuntime(target.model), DraftRuntime(draft.model), link, tokenizer=tokenizer)
    eos = eos_token_ids(target.model, tokenizer)
    fingerprint = tokenizer_fingerprint(tokenizer)
    rows: list[dict] = []
    with (args.out / "results.jsonl").open("w") as sink:
        for mode in [Mode.parse(m) for m in args.modes.split(",")]:
            for name, schema, instruction in CASES:
                prompt_ids = render_prompt(tokenizer, messages(instruction))
                grammar = Grammar("json_schema", json.dumps(schema), fingerprint)
                # Alternate which arm runs first, so neither always finds the caches and the CPU warmer.
                arms = [("free", None), ("schema", grammar)]
                for arm, constraint in arms if len(rows) % 4 == 0 else arms[::-1]:
                    config = GenerationConfig(
                        max_new_tokens=args.max_new_tokens, gamma=args.gamma, eos_ids=eos, grammar=constraint
                    )
                    row = {"mode": mode.value, "case": name, "arm": arm, "load": os.getloadavg()[0]}
                    row.update(run_once(engine, tokenizer, prompt_ids, mode, config))
                    rows.append(row)
                    sink.write(json.dumps(row) + "\n")
                    sink.flush()
                    print(json.dumps({k: v for k, v in row.items() if k != "text"}), flush=True)
    report = table(rows, args)
    (args.out / "table.md").write_text(report)
    print(report)


def table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"Target {args.target}, draft {args.draft}, {args.dtype}, γ {args.gamma}, at most {args.max_new_tokens} new "
        f"tokens, {args.profile} link; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "",
        "| mode | arm | tokens | tokens/s | tokens/s after the first | tokens/round | acceptance | edge mask share "
        "| server mask share | mask ms/round edge / server | outputs that parse as JSON |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in dict.fromkeys(r["mode"] for r in rows):
        summary = {}
        for arm in ("free", "schema"):
            chosen = [r for r in rows if r["mode"] == mode and r["arm"] == arm]
            s = summary[arm] = summarise(chosen)
            lines.append(
                f"| {mode} | {arm} | {s['tokens']} | {s['tokens_per_s']:.2f} | {s['tokens_per_s_after_first']:.2f} | "
                f"{s['tokens_per_round']:.2f} | {s['acceptance']:.2f} | {s['edge_mask_share']:.1%} | "
                f"{s['server_mask_share']:.1%} | {s['edge_mask_ms_per_round']:.1f} / "
                f"{s['server_mask_ms_per_round']:.1f} | {s['valid_json']} of {len(chosen)} |"
            )
        ratio = summary["schema"]["tokens_per_s"] / summary["free"]["tokens_per_s"]
        after = summary["schema"]["tokens_per_s_after_first"] / summary["free"]["tokens_per_s_after_first"]
        lines.append(f"| {mode} | schema ÷ free | | **{ratio:.2f}×** | **{after:.2f}×** | | | | | | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
