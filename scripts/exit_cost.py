"""What early exits add to a verify on the real target: whole-vocabulary exits against
candidate-id exits (each exit scores only the draft's top-8 ids per drafted token).

One session, γ = 4 (5 rows after CONTEXT cached tokens), one thread; the three kinds of forward
alternate so drift in the machine's load hits them alike; medians of --repeats. Also times the
edge's share: picking the draft's top-8 from one row of logits.

    PYTHONPATH=src python scripts/exit_cost.py [--exits auto|DIR|logit-lens:14,21] [--dtype bfloat16] [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from edgespec.models.exit_choice import resolve_exits
from edgespec.hostinfo import host_facts
from edgespec.models.draft import EXIT_CANDIDATES, top_candidates
from edgespec.models.loading import load_model, resolve_dtype
from edgespec.models.target import TargetRuntime

CONTEXT = 200
GAMMA = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="qwen2.5-coder-1.5b")
    parser.add_argument("--exits", default="auto")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype = resolve_dtype(args.dtype)
    loaded = load_model(args.target, dtype)
    exits = resolve_exits(args.exits, loaded.model, args.target)
    if exits is None:
        raise SystemExit("no exits to measure")
    runtime = TargetRuntime(loaded.model, exits)
    context = list(range(1000, 1000 + CONTEXT))
    block = [10, 11, 12, 13]
    vocab = runtime.vocab_size
    candidates = torch.stack([torch.randperm(vocab)[:EXIT_CANDIDATES] for _ in block])
    candidates[:, 0] = torch.tensor(block)

    def verify(kind: str) -> float:
        runtime.score_tail(context, 1)  # roll back to the context: every timed forward feeds the block
        on_exit = None if kind == "none" else (lambda reading: None)
        start = time.perf_counter()
        runtime.score_tail(context + block + [14], GAMMA + 1, on_exit=on_exit, exit_candidates=candidates if kind == "candidates" else None)
        return (time.perf_counter() - start) * 1000

    kinds = ("none", "full", "candidates")
    for kind in kinds:  # first calls compile kernels for new shapes: not timed
        verify(kind)
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(args.repeats):
        for kind in kinds:
            times[kind].append(verify(kind))
    median = {kind: statistics.median(values) for kind, values in times.items()}
    # The exit's own work, timed directly (the forward differences above are within the verify's noise
    # for candidate exits): one exit reading of the 5 rows, whole vocabulary vs the 4 x 8 candidates.
    hidden = torch.randn(GAMMA + 1, int(loaded.model.config.hidden_size), dtype=next(loaded.model.parameters()).dtype)
    layers = list(exits.layers)
    layer = layers[0]

    def per_call_ms(run) -> float:  # type: ignore[no-untyped-def]
        run()
        start = time.perf_counter()
        for _ in range(20):
            run()
        return (time.perf_counter() - start) * 1000 / 20

    with torch.inference_mode():
        direct_full = per_call_ms(lambda: runtime.exit_logits(layer, hidden).float())
        direct_candidates = per_call_ms(lambda: runtime.exit_candidate_logits(layer, hidden, candidates).float())
    logits = torch.randn(vocab)
    top_candidates(logits, 0)
    start = time.perf_counter()
    for _ in range(100):
        top_candidates(logits, 0)
    topk_ms = (time.perf_counter() - start) * 10
    result = {
        "target": args.target,
        "dtype": dtype,
        "exit_layers": layers,
        "verify_ms": round(median["none"], 1),
        "full_vocab_exits_ms": round(median["full"] - median["none"], 2),
        "candidate_exits_ms": round(median["candidates"] - median["none"], 2),
        "full_vocab_share_of_verify": round((median["full"] - median["none"]) / median["none"], 4),
        "candidate_share_of_verify": round((median["candidates"] - median["none"]) / median["none"], 4),
        "one_exit_reading_ms": {"full_vocab": round(direct_full, 3), "candidates": round(direct_candidates, 3)},
        "candidate_exits_share_of_verify_direct": round(direct_candidates * len(layers) / median["none"], 5),
        "edge_top8_ms_per_drafted_token": round(topk_ms, 3),
        "repeats": args.repeats,
        "host": host_facts(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
