"""What one batched forward pass costs by shape (rows x fed tokens per row), on the real target.

Measures the padded rectangles the scheduler builds: verify rows alone, a prefill chunk alone, and
verify rows riding with a chunk (every row padded to the chunk). Chooses --prefill-chunk and
--max-batch-rows from this. One thread, bf16 by default:

    PYTHONPATH=src python scripts/pass_costs.py [--target qwen2.5-coder-1.5b] [--dtype bfloat16] [--context 64]
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

from edgespec.hostinfo import host_facts
from edgespec.models.loading import load_model
from edgespec.models.target import ScoreRequest, TargetRuntime

SHAPES = [(1, 5), (8, 5), (1, 16), (1, 32), (1, 64), (9, 8), (9, 16), (9, 32), (4, 32), (8, 32)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="qwen2.5-coder-1.5b")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--context", type=int, default=64, help="tokens already cached per row")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    runtime = TargetRuntime(load_model(args.target, args.dtype).model)
    rng = random.Random(0)
    vocab = min(runtime.vocab_size, 30000)
    rows = max(r for r, _ in SHAPES)
    contexts = [[rng.randrange(100, vocab) for _ in range(args.context)] for _ in range(rows)]
    caches = [runtime.new_cache() for _ in range(rows)]
    runtime.score_batch([ScoreRequest(c, 1, kv) for c, kv in zip(contexts, caches)])
    results = []
    for count, feed in SHAPES:
        best = float("inf")
        for _ in range(args.repeats):
            requests = [ScoreRequest(contexts[i] + [rng.randrange(100, vocab) for _ in range(feed)], feed if feed <= 8 else 1, caches[i]) for i in range(count)]
            started = time.perf_counter()
            runtime.score_batch(requests)
            best = min(best, time.perf_counter() - started)
            for i in range(count):
                runtime.rollback(contexts[i] + [0], kv=caches[i])  # back to the context
        results.append({"rows": count, "feed": feed, "padded_tokens": count * feed, "ms": round(best * 1000, 1)})
        print(json.dumps(results[-1]), flush=True)
    print(json.dumps({"host": host_facts(), "target": args.target, "dtype": args.dtype, "context": args.context}))


if __name__ == "__main__":
    main()
