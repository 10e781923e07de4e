"""`edgespec trace`: record greedy traces (the target's continuation, and the draft's and the
exits' choices along it) that `edgespec simulate` replays."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from edgespec.cli.progress import progress
from edgespec.models.presets import DEFAULT_DRAFT, DEFAULT_TARGET


def split_list(text: str) -> tuple[str, ...]:
    """A comma-separated option as its non-empty parts."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def add_trace_parser(subparsers: Any) -> None:
    trace = subparsers.add_parser(
        "trace",
        help="record greedy traces: the target's continuation, the draft's and exits' choices along it",
        description="Record greedy traces: the target's own continuation of each prompt and, teacher-forced along it, "
        "the draft's argmax and each exit's argmax and confidence; `edgespec simulate` replays them.",
    )
    trace.add_argument("--target", default=DEFAULT_TARGET)
    trace.add_argument("--draft", default=DEFAULT_DRAFT)
    trace.add_argument("--exits", default="auto", help="auto | none | DIR | logit-lens:L1,L2")
    trace.add_argument(
        "--prompts",
        default="mtbench,humaneval",
        help="comma-separated: mtbench, humaneval (evaluation), sharegpt (held-out ShareGPT first turns, for tuning), "
        "FILE.jsonl",
    )
    trace.add_argument("--num-prompts", type=int, default=6)
    trace.add_argument("--max-new-tokens", type=int, default=64)
    trace.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    trace.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    trace.add_argument("--out", default="out/traces")
    trace.set_defaults(handler=run_trace)


def run_trace(args: argparse.Namespace) -> int:
    import torch

    from edgespec.data.prompt_sets import load_prompts
    from edgespec.drivers.trace import write_traces
    from edgespec.models.exit_choice import resolve_exits
    from edgespec.models.loading import load_model, resolve_dtype
    from edgespec.models.target import TargetRuntime
    from edgespec.prompting import eos_token_ids, render_prompt
    from edgespec.sim.trace import record_trace

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype)
    target = load_model(args.target, dtype)
    draft = load_model(args.draft, dtype)
    exits = resolve_exits(args.exits, target.model, args.target)
    runtime = TargetRuntime(target.model, exits)
    eos = eos_token_ids(target.model, target.tokenizer)
    records = [(name, record) for name in split_list(args.prompts) for record in load_prompts(name, args.num_prompts)]
    traces = []
    for name, record in progress(records, desc="tracing", unit="prompt"):
        prompt_ids = render_prompt(
            target.tokenizer,
            record.text if not record.is_chat else record.messages,
            raw=not record.is_chat,
        )
        traces.append(record_trace(runtime, draft.model, prompt_ids, args.max_new_tokens, eos, record.id, name))
    meta = {
        "target": args.target,
        "draft": args.draft,
        "dtype": dtype,
        "exits": args.exits,
        "exit_layers": list(exits.layers) if exits is not None else [],
        "max_new_tokens": args.max_new_tokens,
        "eos_ids": sorted(eos),
        "command": "edgespec " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    }
    path = write_traces(args.out, traces, meta)
    print(f"wrote {len(traces)} traces to {path}")
    return 0
