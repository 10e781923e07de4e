"""`make demo`: the real system on the default pair.

Starts `edgespec serve` (Qwen2.5-Coder-1.5B with exits, one core), puts `edgespec link --profile
wan` (50 ms RTT, 20 Mbit/s) in front of it, and runs the edge client (Qwen2.5-Coder-0.5B drafting,
on llama.cpp by default, the other core) in separate processes, once per mode; prints each mode's speed side by side.
"""

from __future__ import annotations

import argparse

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
    args = parser.parse_args()

    print(f"starting the server ({args.target}) and a '{args.profile}' link; the first run converts the weights (minutes, once)...", flush=True)
    with deploy(args.target, args.dtype, args.profile, log_dir=args.log_dir) as deployment:
        address = f"127.0.0.1:{deployment.client_port}"
        common = ["--draft", args.draft, "--dtype", args.dtype, "--draft-backend", args.draft_backend]
        run_client(address, [*common, "--mode", "sd", "--max-new-tokens", "4", "warm-up"])  # excluded
        rows = []
        for mode in MODES:
            print(f"  {mode} ...", flush=True)
            result = run_client(address, [*common, "--mode", mode, "--max-new-tokens", str(args.max_new_tokens), args.prompt])
            rows.append((mode, result))
    baseline = rows[0][1]
    print()
    print(f"{'mode':17s} {'tokens':>6s} {'tok/s':>7s} {'vs cloud-ar':>11s} {'ms/token':>9s} {'TTFT ms':>8s} {'tok/round':>9s} {'hit rate':>8s}  same text as cloud-ar")
    for mode, result in rows:
        stats = result["stats"]
        speedup = stats["tokens_per_s"] / baseline["stats"]["tokens_per_s"]
        ms_per_token = 1000 * stats["total_s"] / max(1, stats["new_tokens"])
        same = "yes" if result["tokens"] == baseline["tokens"] else ("no (edge-only is not lossless)" if mode == "edge-only" else "NO")
        print(
            f"{mode:17s} {stats['new_tokens']:6d} {stats['tokens_per_s']:7.2f} {speedup:10.2f}x {ms_per_token:9.0f} "
            f"{1000 * stats['ttft_s']:8.0f} {stats['tokens_per_round']:9.2f} {stats['hit_rate']:8.2f}  {same}"
        )
    print()
    print("generated (cloud-ar):", baseline["text"])


if __name__ == "__main__":
    main()
