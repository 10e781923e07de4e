"""How much work a batched verify pass dispatches besides the model's own math: a tiny 28-layer
Qwen2 (so per-session bookkeeping, not matrix products, dominates, as on a launch-bound GPU),
N sessions of ragged context, one pass of 5-row blocks; the torch profiler counts the operations
that move memory (each one kernel launch on an accelerator) and all non-view operations.

    python scripts/batch_pass_ops.py --sessions 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from edgespec.models.target import ScoreRequest, TargetRuntime  # noqa: E402

MOVES = {"aten::copy_", "aten::cat", "aten::index_copy_", "aten::zeros", "aten::new_zeros", "aten::clone", "aten::fill_", "aten::zero_"}
VIEWS = {
    "aten::empty", "aten::slice", "aten::select", "aten::view", "aten::as_strided", "aten::transpose", "aten::unsqueeze",
    "aten::expand", "aten::reshape", "aten::t", "aten::_unsafe_view", "aten::alias", "aten::detach", "aten::lift_fresh",
    "aten::resolve_conj", "aten::resolve_neg", "aten::empty_like", "aten::empty_strided", "aten::squeeze", "aten::permute",
    "aten::contiguous", "aten::narrow", "aten::split", "aten::chunk", "aten::unbind",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=28, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=2048)
    runtime = TargetRuntime(Qwen2ForCausalLM(config).eval())
    requests = []
    for index in range(args.sessions):
        kv = runtime.new_cache()
        sequence = torch.randint(0, config.vocab_size, (100 + (index * 37) % 200,)).tolist()
        runtime.score_tail(sequence, 1, kv=kv)
        requests.append(ScoreRequest(sequence + [5] * 5, 5, kv, argmax_only=True))
    runtime.score_batch(requests)
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        runtime.score_batch(requests)
    events = profiled.key_averages()
    moves = sum(e.count for e in events if e.key in MOVES)
    operations = sum(e.count for e in events if e.key.startswith("aten::") and e.key not in VIEWS)
    times = []
    for _ in range(7):
        started = time.perf_counter()
        runtime.score_batch(requests)
        times.append((time.perf_counter() - started) * 1000)
    print(f"{args.sessions} sessions, one pass: {operations} operations ({moves} moving memory), {statistics.median(times):.1f} ms on this CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
