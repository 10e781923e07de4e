"""What the target's forward passes cost by shape, measured with edgespec's own runtime: the
batched cost profile of a target built from its config with random weights (for an accelerator,
where no weights can travel), the padded rectangles the scheduler builds on a real target, and
how many operations one batched pass dispatches besides the model's own math.

Timing depends on the architecture and the shapes, not on the weight values; acceptance and hit
rates are properties of real weights and are not measured here. Results are plain dicts, ready
for JSON; ``on_step`` callbacks let a front end show progress (the library prints nothing)."""

from __future__ import annotations

import functools
import logging
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from edgespec.models.target import ScoreRequest, TargetRuntime

logger = logging.getLogger(__name__)

# Called after each measured item with its label and figures.
StepCallback = Callable[[str, dict[str, Any]], None]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_ms(function: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median milliseconds of ``function()`` after two warm-up calls (the first calls of a shape
    build its kernels), synchronizing an accelerator around each call."""
    for _ in range(2):
        function()
    samples = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        function()
        _synchronize(device)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def random_weight_target(config_dir: str, dtype: str, device: str) -> Any:
    """A causal LM in the shapes of ``config_dir/config.json`` with random weights, made on the
    device itself (no minutes of CPU initialisation for a large model)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_dir)
    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype)).eval()


@dataclass(frozen=True)
class BatchedCostConfig:
    """What ``profile_batched_costs`` measures: verifies of each γ, and batched passes of each
    session count, every session holding ``context`` cached tokens."""

    context: int = 384
    gammas: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8)
    batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    repeats: int = 20


def profile_batched_costs(
    runtime: TargetRuntime, device: torch.device, config: BatchedCostConfig, on_step: StepCallback | None = None
) -> dict[str, Any]:
    """Prefill, decode, verify of γ + 1 rows (with and without exits where the runtime has
    them) and batched verify / decode passes, as the server runs them: medians in ms."""
    exits = runtime.exits
    vocab = runtime.vocab_size
    generator = torch.Generator().manual_seed(1)
    report = on_step or (lambda label, row: None)

    def sequence(length: int) -> list[int]:
        return torch.randint(0, vocab, (length,), generator=generator).tolist()

    def session(tail: int, with_exits: bool, argmax_only: bool = True, candidates: bool = False) -> ScoreRequest:
        kv = runtime.new_cache()
        seq = sequence(config.context + tail)
        runtime.score_tail(seq[: config.context], 1, kv=kv)  # prefill; every timed call re-feeds `tail`
        exit_ids = torch.randint(0, vocab, (tail - 1, 8), generator=generator) if candidates and tail > 1 else None
        on_exit = (lambda reading: None) if with_exits else None
        return ScoreRequest(seq, tail, kv, on_exit=on_exit, exit_candidates=exit_ids, argmax_only=argmax_only)

    def verdicts(requests: list[ScoreRequest]) -> list[list[int]]:
        """A pass as the server consumes it: a greedy verdict needs each row's argmax only (the
        ids themselves with ``argmax_only``; else from the logits copied to the host)."""
        return [r.tolist() if r.dim() == 1 else r.argmax(dim=-1).tolist() for r in runtime.score_batch(requests)]

    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "context": config.context,
        "exit_layers": list(exits.layers) if exits else [],
        "torch": torch.__version__,
    }
    prompt = sequence(config.context)
    prefill_repeats = max(3, config.repeats // 4)
    prefill = lambda: runtime.score_tail(prompt, 1, kv=runtime.new_cache())  # noqa: E731
    results["prefill_ms"] = timed_ms(prefill, prefill_repeats, device)
    per_gamma: dict[str, dict[str, float]] = {}
    for gamma in config.gammas:
        row = {}
        for with_exits in (False, True) if exits else (False,):
            request = session(gamma + 1, with_exits)
            row["with_exits_ms" if with_exits else "ms"] = timed_ms(lambda: verdicts([request]), config.repeats, device)
        per_gamma[str(gamma)] = row
        report(f"verify gamma={gamma}", row)
    decode = session(1, False)
    results["decode_ms"] = timed_ms(lambda: verdicts([decode]), config.repeats, device)
    results["verify"] = per_gamma
    batched: dict[str, dict[str, float]] = {}
    repeats = max(5, config.repeats // 2)
    for size in config.batches:
        # Sessions without exits, as sd and cloud-ar run; "host" keeps every row's float32 logits
        # copy to the host (what sampled sessions need, and what greedy ones paid before).
        verify = [session(5, False) for _ in range(size)]
        decodes = [session(1, False) for _ in range(size)]
        row = {
            "verify_gamma4_ms": timed_ms(functools.partial(verdicts, verify), repeats, device),
            "decode_ms": timed_ms(functools.partial(verdicts, decodes), repeats, device),
        }
        for request in verify + decodes:
            request.argmax_only = False
        row["verify_gamma4_host_logits_ms"] = timed_ms(functools.partial(verdicts, verify), repeats, device)
        row["decode_host_logits_ms"] = timed_ms(functools.partial(verdicts, decodes), repeats, device)
        if exits:  # the pre-draft modes: candidate-id exits, as `serve` runs them
            with_exits = [session(5, True, candidates=True) for _ in range(size)]
            row["verify_gamma4_candidate_exits_ms"] = timed_ms(functools.partial(verdicts, with_exits), repeats, device)
            del with_exits
        batched[str(size)] = row
        report(f"batch {size}", row)
        del verify, decodes
    results["batched"] = batched
    return results


# (rows, fed tokens per row): verify rows alone, a prefill chunk alone, verify rows riding with a
# chunk (every row padded to the chunk).
PASS_SHAPES: tuple[tuple[int, int], ...] = (
    (1, 5),
    (8, 5),
    (1, 16),
    (1, 32),
    (1, 64),
    (9, 8),
    (9, 16),
    (9, 32),
    (4, 32),
    (8, 32),
)


def pass_costs(
    runtime: TargetRuntime,
    shapes: tuple[tuple[int, int], ...] = PASS_SHAPES,
    context: int = 64,
    repeats: int = 2,
    on_step: StepCallback | None = None,
) -> list[dict[str, Any]]:
    """The best of ``repeats`` ms of one batched pass per (rows, fed tokens) shape, each row
    holding ``context`` cached tokens: the figures to choose `serve --prefill-chunk` and
    `--max-batch-rows` from."""
    rng = random.Random(0)
    vocab = min(runtime.vocab_size, 30000)
    low = min(100, vocab - 1)  # clear of the special ids at the vocabulary's start, where there is room
    rows = max(count for count, _ in shapes)
    contexts = [[rng.randrange(low, vocab) for _ in range(context)] for _ in range(rows)]
    caches = [runtime.new_cache() for _ in range(rows)]
    runtime.score_batch([ScoreRequest(c, 1, kv) for c, kv in zip(contexts, caches)])
    results = []
    for count, feed in shapes:
        best = float("inf")
        for _ in range(repeats):
            tail = feed if feed <= 8 else 1  # verify rows read every fed row; a prefill chunk only its last
            requests = [
                ScoreRequest(contexts[i] + [rng.randrange(low, vocab) for _ in range(feed)], tail, caches[i])
                for i in range(count)
            ]
            started = time.perf_counter()
            runtime.score_batch(requests)
            best = min(best, time.perf_counter() - started)
            for i in range(count):
                runtime.rollback(contexts[i] + [0], kv=caches[i])  # back to the context
        row = {"rows": count, "feed": feed, "padded_tokens": count * feed, "ms": round(best * 1000, 1)}
        results.append(row)
        if on_step is not None:
            on_step(f"{count}x{feed}", row)
    return results


# Operations that move memory: each is one kernel launch on an accelerator.
MEMORY_MOVES = frozenset(
    {
        "aten::copy_",
        "aten::cat",
        "aten::index_copy_",
        "aten::zeros",
        "aten::new_zeros",
        "aten::clone",
        "aten::fill_",
        "aten::zero_",
    }
)
# Operations that only make views or empty buffers: no work of their own.
VIEW_OPERATIONS = frozenset(
    {
        "aten::empty",
        "aten::slice",
        "aten::select",
        "aten::view",
        "aten::as_strided",
        "aten::transpose",
        "aten::unsqueeze",
        "aten::expand",
        "aten::reshape",
        "aten::t",
        "aten::_unsafe_view",
        "aten::alias",
        "aten::detach",
        "aten::lift_fresh",
        "aten::resolve_conj",
        "aten::resolve_neg",
        "aten::empty_like",
        "aten::empty_strided",
        "aten::squeeze",
        "aten::permute",
        "aten::contiguous",
        "aten::narrow",
        "aten::split",
        "aten::chunk",
        "aten::unbind",
    }
)


def launch_bound_target(layers: int = 28) -> Any:
    """A tiny Qwen2 of ``layers`` layers: its matrix products are negligible, so per-session
    bookkeeping dominates a pass as it does on a launch-bound accelerator."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=2048,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    )
    return Qwen2ForCausalLM(config).eval()


def count_pass_operations(runtime: TargetRuntime, sessions: int, timing_repeats: int = 7) -> dict[str, Any]:
    """One batched pass of ``sessions`` sessions' 5-row blocks over ragged contexts of 100-300
    tokens, under torch's profiler: the operations it dispatches (all non-view ones, and those
    that move memory) and its median wall ms on this CPU."""
    from torch.profiler import ProfilerActivity, profile

    vocab = runtime.vocab_size
    requests = []
    for index in range(sessions):
        kv = runtime.new_cache()
        sequence = torch.randint(0, vocab, (100 + (index * 37) % 200,)).tolist()
        runtime.score_tail(sequence, 1, kv=kv)
        requests.append(ScoreRequest(sequence + [5] * 5, 5, kv, argmax_only=True))
    runtime.score_batch(requests)  # the first pass of a shape is not representative
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        runtime.score_batch(requests)
    events = profiled.key_averages()
    moves = sum(e.count for e in events if e.key in MEMORY_MOVES)
    operations = sum(e.count for e in events if e.key.startswith("aten::") and e.key not in VIEW_OPERATIONS)
    times = []
    for _ in range(timing_repeats):
        started = time.perf_counter()
        runtime.score_batch(requests)
        times.append((time.perf_counter() - started) * 1000)
    return {"sessions": sessions, "operations": operations, "memory_moves": moves, "ms": statistics.median(times)}
