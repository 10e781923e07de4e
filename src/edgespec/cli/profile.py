"""`edgespec profile`: measure what the target's passes cost, beside the host probe that
`simulate --hardware host` runs. Parses options, calls ``edgespec.sim.profiling`` /
``edgespec.sim.exit_costs``, prints the figures (JSON) and shows progress on a terminal.

    edgespec profile batched --config CONFIG_DIR --out costs.json   # random weights, real shapes (an accelerator)
    edgespec profile passes [--target NAME] [--dtype bfloat16]      # padded pass shapes on the real target
    edgespec profile exits [--exits auto|DIR|logit-lens:14,21]      # what exits add to a verify
    edgespec profile ops [--sessions 64]                            # operations one batched pass dispatches
    edgespec profile engine [--engine llamacpp] [--threads 1]       # decode / verify / batched verify in an engine
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_TARGET = "qwen2.5-coder-1.5b"


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def add_profile_parser(commands: Any) -> None:
    """Register `profile` and its subcommands on the top-level subparsers.

    Long because it declares every flag of every subcommand, one statement each."""
    profile = commands.add_parser(
        "profile",
        help="measure the target's pass costs (batched, by shape, exits, operations)",
        description="Cost profiles of the verifier's forward passes, for the simulator's hardware profiles and for "
        "choosing batching limits. Example: edgespec profile passes --target smollm2-135m",
    )
    kinds = profile.add_subparsers(dest="profile_command", required=True)

    batched = kinds.add_parser(
        "batched",
        help="decode, verify and batched-verify costs of a target built from its config.json with random weights",
        description="Timing depends on the architecture and shapes, not the weight values, so no weights need to "
        "travel to the accelerator; acceptance and hit rates are NOT measured here.",
    )
    batched.add_argument("--config", required=True, help="directory holding the target's config.json")
    batched.add_argument("--exits", help="an exits directory (exits.json + exits.safetensors)")
    batched.add_argument(
        "--logit-lens-exits",
        default="",
        help="e.g. 24,26: untrained exits (same cost as trained linear ones, less the adapter)",
    )
    batched.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    batched.add_argument("--dtype", default="bfloat16")
    batched.add_argument("--context", type=int, default=384, help="tokens already in each session's cache")
    batched.add_argument("--gammas", default="1,2,3,4,5,6,8")
    batched.add_argument("--batches", default="1,2,4,8,16,32")
    batched.add_argument("--repeats", type=int, default=20)
    batched.add_argument("--out", type=Path, required=True)
    batched.set_defaults(handler=run_profile_batched)

    passes = kinds.add_parser(
        "passes",
        help="one batched pass by shape (rows x fed tokens) on the real target: "
        "choose --prefill-chunk and --max-batch-rows",
        description="Times one batched pass per shape (rows x fed tokens) on the real target.",
    )
    passes.add_argument("--target", default=DEFAULT_TARGET)
    passes.add_argument("--dtype", default="bfloat16")
    passes.add_argument("--context", type=int, default=64, help="tokens already cached per row")
    passes.add_argument("--repeats", type=int, default=2)
    passes.set_defaults(handler=run_profile_passes)

    exits = kinds.add_parser(
        "exits",
        help="what early exits add to a verify: whole-vocabulary vs candidate-id exits, one thread",
        description="What early exits add to a verify, whole-vocabulary against candidate-id exits, on one thread.",
    )
    exits.add_argument("--target", default=DEFAULT_TARGET)
    exits.add_argument(
        "--exits", default="auto", help="auto (shipped or logit-lens), an exits directory, or logit-lens:14,21"
    )
    exits.add_argument("--dtype", default="bfloat16")
    exits.add_argument("--repeats", type=int, default=15)
    exits.set_defaults(handler=run_profile_exits)

    ops = kinds.add_parser(
        "ops",
        help="operations one batched verify pass dispatches besides the model's math "
        "(a tiny 28-layer Qwen2, torch profiler)",
        description="Counts the operations one batched verify pass dispatches besides the model's math "
        "(a tiny 28-layer Qwen2 under the torch profiler): on a launch-bound GPU each is a kernel launch.",
    )
    ops.add_argument("--sessions", type=int, default=64)
    ops.add_argument(
        "--engine",
        choices=("transformers", "paged"),
        default="transformers",
        help="eager transformers (per-session caches) or the paged engine (one pool, packed passes)",
    )
    ops.set_defaults(handler=run_profile_ops)

    engine = kinds.add_parser(
        "engine",
        help="decode, verify and several sessions' verifies in one pass, inside a target engine",
        description="Times a decode, a verify of a block and several sessions' blocks in one pass inside a target "
        "engine (llama.cpp on the target's GGUF, or transformers), on --threads threads.",
    )
    engine.add_argument("--target", default=DEFAULT_TARGET)
    engine.add_argument("--engine", choices=("llamacpp", "paged", "transformers"), default="llamacpp")
    engine.add_argument("--dtype", default="bfloat16", help="transformers engine only")
    engine.add_argument("--threads", type=int, default=1)
    engine.add_argument("--context", type=int, default=128, help="tokens already cached per session")
    engine.add_argument("--block", type=int, default=5, help="tokens a verify feeds (logits at each)")
    engine.add_argument("--sessions", default="1,2,4", help="sessions per batched verify")
    engine.add_argument("--repeats", type=int, default=10)
    engine.add_argument(
        "--out", type=Path, default=None, help="also write the figures here (`simulate --hardware FILE` reads them)"
    )
    engine.set_defaults(handler=run_profile_engine)


def _progress(total: int, description: str) -> Any:
    """A progress bar on a terminal; silent when output goes to a file."""
    from edgespec.cli.progress import progress

    return progress(total=total, desc=description, unit="shape")


def run_profile_batched(args: argparse.Namespace) -> int:
    import torch

    from edgespec.models.exit_heads import ExitHeads
    from edgespec.models.target import TargetRuntime
    from edgespec.sim.profiling import BatchedCostConfig, profile_batched_costs, random_weight_target

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = random_weight_target(args.config, args.dtype, str(device))
    exits = ExitHeads.load(args.exits) if args.exits else None
    if exits is None and args.logit_lens_exits:
        exits = ExitHeads.logit_lens(_ints(args.logit_lens_exits), int(model.config.hidden_size))
    config = BatchedCostConfig(
        context=args.context, gammas=_ints(args.gammas), batches=_ints(args.batches), repeats=args.repeats
    )
    with _progress(len(config.gammas) + len(config.batches), "profiling") as bar:

        def step(label: str, row: dict[str, Any]) -> None:
            bar.write(f"{label}: {row}")
            bar.update()

        measured = profile_batched_costs(TargetRuntime(model, exits), device, config, on_step=step)
    results = {"dtype": args.dtype, "config": args.config, **measured}
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


def run_profile_passes(args: argparse.Namespace) -> int:
    import torch

    from edgespec.hostinfo import host_facts
    from edgespec.models.loading import load_model
    from edgespec.models.target import TargetRuntime
    from edgespec.sim.profiling import PASS_SHAPES, pass_costs

    torch.set_num_threads(1)
    runtime = TargetRuntime(load_model(args.target, args.dtype).model)
    with _progress(len(PASS_SHAPES), "pass shapes") as bar:

        def step(label: str, row: dict[str, Any]) -> None:
            bar.write(json.dumps(row))
            bar.update()

        pass_costs(runtime, PASS_SHAPES, context=args.context, repeats=args.repeats, on_step=step)
    print(json.dumps({"host": host_facts(), "target": args.target, "dtype": args.dtype, "context": args.context}))
    return 0


def run_profile_exits(args: argparse.Namespace) -> int:
    import torch

    from edgespec.hostinfo import host_facts
    from edgespec.models.exit_choice import resolve_exits
    from edgespec.models.loading import load_model, resolve_dtype
    from edgespec.models.target import TargetRuntime
    from edgespec.sim.exit_costs import measure_exit_costs

    torch.set_num_threads(1)
    dtype = resolve_dtype(args.dtype)
    loaded = load_model(args.target, dtype)
    exits = resolve_exits(args.exits, loaded.model, args.target)
    if exits is None:
        raise ValueError("no exits to measure (--exits none)")
    with _progress(args.repeats, "exit costs") as bar:
        runtime = TargetRuntime(loaded.model, exits)
        measured = measure_exit_costs(runtime, args.repeats, on_repeat=lambda _: bar.update())
    result = {"target": args.target, "dtype": dtype, **measured, "host": host_facts()}
    print(json.dumps(result, indent=2))
    return 0


def run_profile_ops(args: argparse.Namespace) -> int:
    import torch

    from edgespec.models.target import TargetRuntime
    from edgespec.sim.profiling import count_pass_operations, launch_bound_target

    torch.set_num_threads(1)
    model = launch_bound_target()
    if args.engine == "paged":
        from edgespec.engines.paged import PagedEngine, PoolSettings

        engine: Any = PagedEngine(model, PoolSettings(sessions=args.sessions + 1, session_tokens=512))
    else:
        engine = TargetRuntime(model)
    counted = count_pass_operations(engine, args.sessions)
    print(
        f"{args.engine}: {counted['sessions']} sessions, one pass: {counted['operations']} operations "
        f"({counted['memory_moves']} moving memory), {counted['ms']:.1f} ms on this CPU"
    )
    return 0


def run_profile_engine(args: argparse.Namespace) -> int:
    from edgespec.engines.timing import TimingConfig, time_engine
    from edgespec.hostinfo import host_facts

    sessions = _ints(args.sessions)
    if args.engine == "llamacpp":
        from edgespec.engines.selection import load_llamacpp_engine

        engine: Any = load_llamacpp_engine(args.target, max(sessions), args.context + 2 * args.block + 64, args.threads)
    else:
        import torch

        from edgespec.engines.transformers_engine import TransformersEngine
        from edgespec.models.loading import load_model

        torch.set_num_threads(args.threads)
        model = load_model(args.target, args.dtype).model
        if args.engine == "paged":
            from edgespec.engines.paged import PagedEngine, PoolSettings

            tokens = args.context + 2 * args.block + 64
            engine = PagedEngine(model, PoolSettings(sessions=max(sessions) + 1, session_tokens=tokens))
        else:
            engine = TransformersEngine(model)
    config = TimingConfig(context=args.context, block=args.block, sessions=sessions, repeats=args.repeats)
    measured = time_engine(engine, config, on_step=lambda name, ms: print(f"{name}: {ms} ms", file=sys.stderr))
    results = {"target": args.target, "threads": args.threads, **measured, "host": host_facts()}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0
