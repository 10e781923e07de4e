"""What early exits add to a verify: whole-vocabulary exits against candidate-id exits (each exit
scores only the draft's top-k ids per drafted token), and the edge's share of picking those ids.

One session, a block of γ = 4 (5 rows) after ``CONTEXT`` cached tokens; the three kinds of
forward alternate, so drift in the machine's load hits them alike; medians of the repeats."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

from edgespec.models.draft import EXIT_CANDIDATES, top_candidates
from edgespec.models.target import TargetRuntime

CONTEXT = 200
BLOCK = (10, 11, 12, 13)  # γ = 4 drafted tokens; the verify feeds them and the token after
FORWARD_KINDS = ("none", "full", "candidates")


def _per_call_ms(run: Callable[[], object], calls: int = 20) -> float:
    run()  # the first call of a shape builds its kernels
    start = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - start) * 1000 / calls


def measure_exit_costs(
    runtime: TargetRuntime, repeats: int = 15, on_repeat: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Median verify ms without exits, and what whole-vocabulary and candidate-id exits add to
    it (also as a share of the verify); one exit reading timed directly (candidate exits' cost is
    within a forward's noise); the edge's top-k pick per drafted token. ``runtime`` carries the
    exits to measure."""
    exits = runtime.exits
    if exits is None:
        raise ValueError("no exits to measure: attach exits to the runtime first")
    vocab = runtime.vocab_size
    context = [token % vocab for token in range(1000, 1000 + CONTEXT)]  # folded into a small test model's vocabulary
    block = list(BLOCK)
    candidates = torch.stack([torch.randperm(vocab)[:EXIT_CANDIDATES] for _ in block])
    candidates[:, 0] = torch.tensor(block)

    def verify(kind: str) -> float:
        runtime.score_tail(context, 1)  # roll back to the context: every timed forward feeds the block
        on_exit = None if kind == "none" else (lambda reading: None)
        exit_candidates = candidates if kind == "candidates" else None
        start = time.perf_counter()
        runtime.score_tail(context + block + [14], len(block) + 1, on_exit=on_exit, exit_candidates=exit_candidates)
        return (time.perf_counter() - start) * 1000

    for kind in FORWARD_KINDS:  # first calls compile kernels for new shapes: not timed
        verify(kind)
    times: dict[str, list[float]] = {kind: [] for kind in FORWARD_KINDS}
    for repeat in range(repeats):
        for kind in FORWARD_KINDS:
            times[kind].append(verify(kind))
        if on_repeat is not None:
            on_repeat(repeat)
    median = {kind: statistics.median(values) for kind, values in times.items()}
    # The exit's own work, timed directly: one exit reading of the 5 rows, whole vocabulary vs
    # the 4 x 8 candidates.
    model = runtime.model
    hidden = torch.randn(len(block) + 1, int(model.config.hidden_size), dtype=next(model.parameters()).dtype)
    layers = list(exits.layers)
    layer = layers[0]
    with torch.inference_mode():
        direct_full = _per_call_ms(lambda: runtime.exit_logits(layer, hidden).float())
        direct_candidates = _per_call_ms(lambda: runtime.exit_candidate_logits(layer, hidden, candidates).float())
    logits = torch.randn(vocab)
    topk_ms = _per_call_ms(lambda: top_candidates(logits, 0), calls=100)
    verify_ms = median["none"]
    return {
        "exit_layers": layers,
        "verify_ms": round(verify_ms, 1),
        "full_vocab_exits_ms": round(median["full"] - verify_ms, 2),
        "candidate_exits_ms": round(median["candidates"] - verify_ms, 2),
        "full_vocab_share_of_verify": round((median["full"] - verify_ms) / verify_ms, 4),
        "candidate_share_of_verify": round((median["candidates"] - verify_ms) / verify_ms, 4),
        "one_exit_reading_ms": {"full_vocab": round(direct_full, 3), "candidates": round(direct_candidates, 3)},
        "candidate_exits_share_of_verify_direct": round(direct_candidates * len(layers) / verify_ms, 5),
        "edge_top8_ms_per_drafted_token": round(topk_ms, 3),
        "repeats": repeats,
    }
