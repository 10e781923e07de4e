"""Time to first token with many concurrent clients: prefills alone (before) against prefills
fed in chunks inside the batched passes (after), through the real benchmark harness.

Runs `edgespec bench --clients N` once per `--prefill-chunk` setting (the bench's server takes it
from $EDGESPEC_PREFILL_CHUNK; 0 = each prefill alone, whole: the old behaviour) and prints, per
setting and mode: TTFT mean / p50 / p90 / max, aggregate tokens/s and aggregate decode tokens/s
(tokens after each client's first token over the time after it).

    PYTHONPATH=src python scripts/prefill_batching_check.py --clients 8 --chunks 0,64 \\
        --modes cloud-ar,sd --profile wan --dtype bfloat16 --max-new-tokens 32 --num-prompts 4

Indicative only on a shared machine: the host and its load average are recorded with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from edgespec.hostinfo import host_facts


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in records if "stats" in r]
    if not done:  # every client failed (see the bench's client logs)
        return {"clients": 0, "errors": len(records), "first_error": next((r.get("error") for r in records), None)}
    ttft = [r["stats"]["ttft_s"] for r in done]
    wall = max(r["ended_at"] for r in done) - min(r["started_at"] for r in done)
    tokens = sum(len(r["tokens"]) for r in done)
    # The serving split: what came after each client's first token, over the time after it.
    first_token_at = [r["started_at"] + r["stats"]["ttft_s"] for r in done]
    decode_wall = max(r["ended_at"] for r in done) - min(first_token_at)
    decode_tokens = sum(max(0, len(r["tokens"]) - 1) for r in done)
    return {
        "clients": len(done),
        "errors": len(records) - len(done),
        "prompt_tokens": [r.get("prompt_tokens") for r in done],
        "ttft_mean_s": round(statistics.fmean(ttft), 2),
        "ttft_p50_s": round(percentile(ttft, 0.5), 2),
        "ttft_p90_s": round(percentile(ttft, 0.9), 2),
        "ttft_max_s": round(max(ttft), 2),
        "tokens_per_s": round(tokens / wall, 3) if wall > 0 else 0.0,
        "decode_tokens_per_s": round(decode_tokens / decode_wall, 3) if decode_wall > 0 else 0.0,
        "wall_s": round(wall, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", default="0,64", help="comma-separated --prefill-chunk settings (0: prefills alone)")
    parser.add_argument("--max-batch-rows", type=int, default=128, help="the server's pass budget in padded token-rows (0: serve's default)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--modes", default="cloud-ar,sd")
    parser.add_argument("--profile", default="wan")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--num-prompts", type=int, default=4, help="per prompt set (mtbench, humaneval)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per benchmark run")
    parser.add_argument("--out", default="out/prefill-batching")
    args, bench_extra = parser.parse_known_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"host": host_facts(), "runs": {}}
    for chunk in (int(c) for c in args.chunks.split(",")):
        run_out = out / f"chunk-{chunk}"
        env = dict(os.environ, EDGESPEC_PREFILL_CHUNK=str(chunk))
        if args.max_batch_rows:
            env["EDGESPEC_MAX_BATCH_ROWS"] = str(args.max_batch_rows)
        command = [
            sys.executable, "-m", "edgespec.cli", "bench", "--clients", str(args.clients), "--modes", args.modes,
            "--profiles", args.profile, "--dtype", args.dtype, "--max-new-tokens", str(args.max_new_tokens),
            "--num-prompts", str(args.num_prompts), "--out", str(run_out), *bench_extra,
        ]
        print(f"prefill chunk {chunk}: {' '.join(command[2:])}", flush=True)
        load_before = os.getloadavg()
        started = time.monotonic()
        subprocess.run(command, env=env, check=True, timeout=args.timeout, stdout=subprocess.DEVNULL)
        records = [json.loads(line) for line in (run_out / "results.jsonl").read_text().splitlines() if line.strip()]
        by_mode = {mode: summarize([r for r in records if r["mode"] == mode]) for mode in dict.fromkeys(r["mode"] for r in records)}
        results["runs"][str(chunk)] = {
            "modes": by_mode, "seconds": round(time.monotonic() - started), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        }
    (out / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nhost: {results['host'].get('cpu', '?')}; {args.clients} clients, {args.profile}, {args.dtype}, {args.max_new_tokens} new tokens")
    print("| prefill chunk | mode | TTFT mean s | p50 | p90 | max | aggregate tok/s | decode tok/s | load avg (1 min) before/after |")
    print("|---|---|---|---|---|---|---|---|---|")
    for chunk, run in results["runs"].items():
        for mode, row in run["modes"].items():
            if not row.get("clients"):
                print(f"| {chunk} | {mode} | every client failed: {row.get('first_error')} |")
                continue
            print(
                f"| {'alone' if chunk == '0' else chunk} | {mode} | {row['ttft_mean_s']} | {row['ttft_p50_s']} | {row['ttft_p90_s']} | "
                f"{row['ttft_max_s']} | {row['tokens_per_s']} | {row['decode_tokens_per_s']} | "
                f"{run['loadavg_before'][0]:.1f}/{run['loadavg_after'][0]:.1f} |"
            )
    print(f"wrote {out}/summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
