"""Where a llama.cpp verify pass spends its time: one context on the target's GGUF, passes of
several shapes timed by the calling thread's CPU time (llama.cpp with one thread computes on it,
so a loaded shared host does not inflate the figure), each under chosen context settings.

Shapes: a decode; 1-8 tokens of one sequence with logits at every position; a 5- and a 16-token
block with logits at every position, at the last only, and at none (the difference is the output
head's cost per row); four sequences' 5-token blocks in one batch, logits everywhere and last only.

    taskset -c 1 python scripts/llamacpp_pass_costs.py --ubatch 512 --flash-attn -1
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import llama_cpp as lib
from llama_cpp import _logger

CONTEXT = 128  # tokens cached in each sequence before every measured pass


def make_context(model, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    params = lib.llama_context_default_params()
    params.n_seq_max = args.sequences
    params.n_ctx = args.sequences * 2048
    params.n_batch = 2048
    params.n_ubatch = args.ubatch
    params.n_threads = params.n_threads_batch = 1
    params.kv_unified = args.kv_unified
    params.flash_attn_type = args.flash_attn
    return lib.llama_init_from_model(model, params)


def fill(batch, entries: list[tuple[int, int, int, bool]]) -> None:  # type: ignore[no-untyped-def]
    batch.n_tokens = len(entries)
    for index, (seq, pos, token, wants_logits) in enumerate(entries):
        batch.token[index], batch.pos[index], batch.n_seq_id[index] = token, pos, 1
        batch.seq_id[index][0], batch.logits[index] = seq, int(wants_logits)


def pass_cpu_ms(context, batch, tokens: int, logits: list[bool], sequences: int, repeats: int) -> float:  # type: ignore[no-untyped-def]
    """Fastest CPU milliseconds of ``repeats`` passes (after one warm-up), each rolled back."""
    memory = lib.llama_get_memory(context)
    times = []
    for attempt in range(repeats + 1):
        for seq in range(sequences):
            lib.llama_memory_seq_rm(memory, seq, CONTEXT, -1)
        fill(
            batch,
            [
                (seq, CONTEXT + i, 1000 + 37 * i + seq + attempt, logits[i])
                for seq in range(sequences)
                for i in range(tokens)
            ],
        )
        started = time.thread_time()
        if lib.llama_decode(context, batch) != 0:
            raise RuntimeError("llama_decode failed")
        if attempt:
            times.append((time.thread_time() - started) * 1000)
    return round(min(times), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--gguf", default=str(Path.home() / ".cache/edgespec/gguf/qwen2.5-coder-1.5b-instruct.gguf"), type=Path
    )
    parser.add_argument("--ubatch", type=int, default=512)
    parser.add_argument("--flash-attn", type=int, default=-1, help="-1 auto, 0 off, 1 on")
    parser.add_argument("--kv-unified", action="store_true")
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    _logger.set_verbose(False)
    lib.llama_backend_init()
    model = lib.llama_model_load_from_file(str(args.gguf).encode(), lib.llama_model_default_params())
    context = make_context(model, args)
    batch = lib.llama_batch_init(2048, 0, 1)
    for seq in range(4):
        fill(batch, [(seq, i, 200 + (7 * i) % 5000, i == CONTEXT - 1) for i in range(CONTEXT)])
        lib.llama_decode(context, batch)
    shapes = {f"tokens_{n}": (n, [True] * n, 1) for n in (1, 2, 3, 4, 5, 8)}
    for n in (5, 16):
        shapes[f"tokens_{n}_logits_last"] = (n, [False] * (n - 1) + [True], 1)
        shapes[f"tokens_{n}_logits_none"] = (n, [False] * n, 1)
    shapes["sessions_4x5"] = (5, [True] * 5, 4)
    shapes["sessions_4x5_logits_last"] = (5, [False] * 4 + [True], 4)
    load_before = os.getloadavg()
    cpu_ms = {name: pass_cpu_ms(context, batch, *shape, args.repeats) for name, shape in shapes.items()}
    settings = {k: v for k, v in vars(args).items() if k != "gguf"}
    print(
        json.dumps(
            {
                "gguf": args.gguf.name,
                "settings": settings,
                "fastest_cpu_ms": cpu_ms,
                "load": [load_before, os.getloadavg()],
            }
        )
    )


if __name__ == "__main__":
    main()
