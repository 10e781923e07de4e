"""`make demo`: the real system on the default pair.

Starts `edgespec serve` (Qwen2.5-Coder-1.5B with exits, one core), puts `edgespec link --profile
wan` (50 ms RTT, 20 Mbit/s) in front of it, and runs the edge client (Qwen2.5-Coder-0.5B drafting,
on llama.cpp by default, the other core) in separate processes, once per mode; prints each mode's speed side by side.

Where a lossless mode's text differs from cloud-ar's it says exactly where and why: the first
differing token, what each side chose, and the margin between the target's top two logits
there in float32 (one teacher-forced forward over cloud-ar's text), and, when affordable, which
outputs equal fp32 `generate` (the oracle). In bf16 a verify (γ + 1 rows) and a decode (1 row)
round differently, so a near-tie can go either way: that is rounding, not a lost token.
"""

from __future__ import annotations

import argparse
from typing import Any

from edgespec.bench.oracle import explain_outputs, first_difference, oracle_generate
from edgespec.bench.processes import deploy, run_client

MODES = ["cloud-ar", "sd", "sd-ee", "sd-ee-predraft", "sd-ee-pipelined", "edge-only"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="qwen2.5-coder-1.5b")
    parser.add_argument("--draft", default="qwen2.5-coder-0.5b")
    parser.add_argument("--profile", default="wan")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--draft-backend", default="llamacpp", choices=["llamacpp", "transformers"])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--prompt", default="Write a Python function that returns the n-th Fibonacci number.")
    parser.add_argument("--log-dir", default="out/demo")
    parser.add_argument(
        "--fp32-check",
        default="auto",
        choices=["auto", "always", "never"],
        help="run fp32 generate of the target as the oracle: auto = when texts differ and --max-new-tokens <= 128",
    )
    args = parser.parse_args()

    print(
        f"starting the server ({args.target}) and a '{args.profile}' link; "
        "the first run converts the weights (minutes, once)...",
        flush=True,
    )
    with deploy(args.target, args.dtype, args.profile, log_dir=args.log_dir) as deployment:
        address = f"127.0.0.1:{deployment.client_port}"
        common = ["--draft", args.draft, "--dtype", args.dtype, "--draft-backend", args.draft_backend]
        run_client(address, [*common, "--mode", "sd", "--max-new-tokens", "4", "warm-up"])  # excluded
        rows = []
        for mode in MODES:
            print(f"  {mode} ...", flush=True)
            result = run_client(
                address, [*common, "--mode", mode, "--max-new-tokens", str(args.max_new_tokens), args.prompt]
            )
            rows.append((mode, result))
    baseline = rows[0][1]
    print()
    print(
        f"{'mode':17s} {'tokens':>6s} {'tok/s':>7s} {'vs cloud-ar':>11s} {'ms/token':>9s} "
        f"{'TTFT ms':>8s} {'tok/round':>9s} {'hit rate':>8s}  same text as cloud-ar"
    )
    for mode, result in rows:
        stats = result["stats"]
        speedup = stats["tokens_per_s"] / baseline["stats"]["tokens_per_s"]
        ms_per_token = 1000 * stats["total_s"] / max(1, stats["new_tokens"])
        print(
            f"{mode:17s} {stats['new_tokens']:6d} {stats['tokens_per_s']:7.2f} {speedup:10.2f}x {ms_per_token:9.0f} "
            f"{1000 * stats['ttft_s']:8.0f} {stats['tokens_per_round']:9.2f} {stats['hit_rate']:8.2f}  "
            f"{same_text(mode, result, baseline)}"
        )
    print()
    print("generated (cloud-ar):", baseline["text"])
    outputs = {mode: result["tokens"] for mode, result in rows}
    if any(
        first_difference(outputs["cloud-ar"], tokens) is not None
        for mode, tokens in outputs.items()
        if mode != "edge-only"
    ):
        explain(args, outputs)
    elif args.fp32_check == "always":
        explain(args, outputs)


def same_text(mode: str, result: dict[str, Any], baseline: dict[str, Any]) -> str:
    position = first_difference(baseline["tokens"], result["tokens"])
    if position is None:
        return "yes"
    if mode == "edge-only":
        return "no (edge-only is not lossless)"
    return f"differs from token {position} (see below)"


def explain(args: argparse.Namespace, outputs: dict[str, list[int]]) -> None:
    """Where and why lossless modes' texts differ: the fp32 target teacher-forced on cloud-ar's
    text (one forward), and fp32 generate when affordable."""
    from edgespec.models.loading import load_model, load_tokenizer, resolve_dtype
    from edgespec.prompting import eos_token_ids, render_prompt

    print()
    print(
        f"why texts differ: loading {args.target} in float32 (the server ran in {resolve_dtype(args.dtype)}) ...",
        flush=True,
    )
    # The prompt exactly as `edgespec generate` rendered it (the draft's tokenizer; same vocabulary).
    prompt_ids = render_prompt(load_tokenizer(args.draft), args.prompt)
    target = load_model(args.target, dtype="float32")
    oracle = None
    if args.fp32_check == "always" or (args.fp32_check == "auto" and args.max_new_tokens <= 128):
        print(f"running fp32 generate of the target ({args.max_new_tokens} tokens) as the oracle ...", flush=True)
        oracle = oracle_generate(
            target.model, prompt_ids, args.max_new_tokens, eos_token_ids(target.model, target.tokenizer)
        )
    for line in explain_outputs(target.model, prompt_ids, outputs, oracle=oracle, decode=target.tokenizer.decode):
        print("  " + line)
    print(
        "  A small fp32 margin is a near-tie: in bf16 a verify (γ + 1 rows) and a decode (1 row) round differently\n"
        "  and can pick either token there; after that token the texts go their own ways. Lossless means equal to\n"
        "  fp32 generate in float32: `edgespec bench --dtype float32 --check-oracle` tests that on many prompts."
    )


if __name__ == "__main__":
    main()
