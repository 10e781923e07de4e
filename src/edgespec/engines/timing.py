"""What an engine's passes cost on this host, measured inside the engine (no server, no network):
a decode, a verify of a block, and several sessions' blocks in one pass against one session's.

These are the figures the goals are stated in (a 5-token verify, a decode, four blocks in one
batch against one) and what `simulate`'s host profile needs from a fast target engine.

Each pass is timed twice: wall clock, and the process's CPU time. On a shared host the wall clock
of a pass includes the time other processes held its core; the CPU time does not, so with a
one-thread engine (llama.cpp with one thread computes on the calling thread) it is the pass's own
cost however loaded the host is. With several threads it sums their work and says less.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from edgespec.engines.interface import TargetEngine
from edgespec.models.target import ScoreRequest


@dataclass(frozen=True)
class TimingConfig:
    context: int = 128  # tokens already cached in each session before every measured pass
    block: int = 5  # tokens a verify feeds (the last committed token + gamma drafts), logits at each
    sessions: tuple[int, ...] = (1, 2, 4)
    repeats: int = 10
    seed: int = 0


def _pass_ms(
    engine: TargetEngine, prefixes: list[list[int]], caches: list[Any], fed: list[list[int]], greedy: bool
) -> tuple[float, float]:
    """One pass feeding ``fed[i]`` after ``prefixes[i]`` (cached), then the fed tokens rolled back:
    its wall-clock and CPU milliseconds."""
    requests = [
        ScoreRequest(prefix + block, len(block), cache, argmax_only=greedy)
        for prefix, block, cache in zip(prefixes, fed, caches)
    ]
    started, started_cpu = time.perf_counter(), time.process_time()
    engine.score_batch(requests)
    elapsed = (time.perf_counter() - started) * 1000
    cpu = (time.process_time() - started_cpu) * 1000
    for prefix, cache in zip(prefixes, caches):
        engine.rollback(prefix + [0], cache)  # keep the prefix: the next pass feeds the same shape
    return elapsed, cpu


def time_engine(
    engine: TargetEngine, config: TimingConfig = TimingConfig(), on_step: Callable[[str, float], None] | None = None
) -> dict[str, Any]:
    """Median and fastest milliseconds of each pass shape (greedy: argmax rows; ``verify_sampled``:
    the full logits rows rejection sampling reads). On a shared machine the fastest of several
    repeats is the closer estimate of the pass alone; the median says what a busy host gives."""
    rng = random.Random(config.seed)
    vocab = min(engine.vocab_size, 30000)  # ordinary ids, away from the special tokens at the end
    lowest = min(100, vocab // 2)  # and from the control tokens at the start

    def tokens(count: int) -> list[int]:
        return [rng.randrange(lowest, vocab) for _ in range(count)]

    most = max(config.sessions)
    prefixes = [tokens(config.context) for _ in range(most)]
    caches = [engine.new_cache() for _ in range(most)]
    started = time.perf_counter()
    engine.score_batch([ScoreRequest(prefixes[0], 1, caches[0])])  # one session's prompt: what a prefill costs
    prefill_ms = round((time.perf_counter() - started) * 1000, 2)
    if most > 1:
        engine.score_batch([ScoreRequest(prefix, 1, cache) for prefix, cache in zip(prefixes[1:], caches[1:])])
    shapes: dict[str, tuple[int, int, bool]] = {"decode": (1, 1, True), "verify": (1, config.block, True)}
    shapes["verify_sampled"] = (1, config.block, False)
    for sessions in config.sessions:
        shapes[f"verify_x{sessions}"] = (sessions, config.block, True)
        shapes[f"decode_x{sessions}"] = (sessions, 1, True)  # cloud-ar's passes: one row per session
    results: dict[str, float] = {}
    fastest: dict[str, float] = {}
    fastest_cpu: dict[str, float] = {}
    for name, (sessions, fed_tokens, greedy) in shapes.items():
        _pass_ms(
            engine, prefixes[:sessions], caches[:sessions], [tokens(fed_tokens) for _ in range(sessions)], greedy
        )  # warm-up
        walls, cpus = zip(
            *(
                _pass_ms(
                    engine,
                    prefixes[:sessions],
                    caches[:sessions],
                    [tokens(fed_tokens) for _ in range(sessions)],
                    greedy,
                )
                for _ in range(config.repeats)
            )
        )
        results[name] = round(statistics.median(walls), 2)
        fastest[name] = round(min(walls), 2)
        fastest_cpu[name] = round(min(cpus), 2)
        if on_step is not None:
            on_step(name, results[name])
    ratios = {
        f"verify_x{s}_over_x1": round(fastest[f"verify_x{s}"] / fastest.get("verify_x1", fastest["verify"]), 2)
        for s in config.sessions
        if s > 1
    }
    return {
        "engine": getattr(engine, "engine_name", "?"),
        "config": asdict(config),
        "median_ms": results,
        "fastest_ms": fastest,
        "fastest_ratios": ratios,
        # Timed once (a cold cache): the simulator's prefill cost, not a goal's figure.
        "prefill": {"tokens": config.context, "ms": prefill_ms},
        "fastest_cpu_ms": fastest_cpu,
    }
