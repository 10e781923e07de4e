"""`edgespec serve`: host the target with its exits as a gRPC verifier (one process, or Ray
Serve replicas with --replicas)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from edgespec.cli.options import (
    add_exit_argument,
    add_model_arguments,
    add_server_security_arguments,
    env_int,
    server_security,
    session_limits,
)
from edgespec.cli.serve_replicas import add_replica_arguments, cmd_serve_replicas, wants_replicas
from edgespec.models.presets import DEFAULT_TARGET


def add_serve_parser(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="host the target with its exits as a gRPC verifier",
        description="Host the target with its exits as a gRPC verifier. Without --auth-token(-file) or "
        "$EDGESPEC_AUTH_TOKEN anyone who reaches the port can use the model: bind to 127.0.0.1 (the default) or set a "
        "token, and add TLS when the token crosses an untrusted network.",
    )
    serve.add_argument("--target", default=DEFAULT_TARGET, help="preset name, HF model dir or .gguf file")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=50051)
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics at http://--metrics-host:PORT/metrics (default: off; see "
        "docs/operations/metrics.md)",
    )
    serve.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="the address the metrics port binds (default loopback)",
    )
    _add_admission_arguments(serve)
    serve.add_argument(
        "--exit-vocab",
        choices=("candidates", "full"),
        default="candidates",
        help="what an exit scores: only the draft's top-k ids per token that a greedy block carries (a few LM-head "
        "rows, the default), or the whole vocabulary (the full LM head, ~15 %% of a verify per exit on a CPU)",
    )
    add_model_arguments(serve)
    serve.add_argument(
        "--device",
        default="cpu",
        help="where the target runs: cpu, cuda, cuda:1, ... (exits follow it)",
    )
    serve.add_argument(
        "--engine",
        choices=("auto", "llamacpp", "paged", "transformers"),
        default="auto",
        help="what runs the target: llamacpp (its own GGUF through llama.cpp, CPU; no exits: early verdicts are off), "
        "paged (transformers over one paged KV pool, packed passes, CUDA graphs; no exits), transformers (eager "
        "PyTorch, exits), or auto: with --exits none llama.cpp for a GGUF target on the CPU and paged on CUDA, "
        "else transformers",
    )
    serve.add_argument(
        "--no-cuda-graphs",
        action="store_true",
        help="paged engine: run every pass eagerly instead of replaying captured CUDA graphs",
    )
    serve.add_argument(
        "--session-context",
        type=int,
        default=2048,
        metavar="TOKENS",
        help="llama.cpp and paged engines: tokens one session may hold (prompt + new tokens + a draft block); "
        "reserved up front for --max-sessions sessions",
    )
    serve.add_argument(
        "--cloud-draft",
        metavar="MODEL",
        help="serve cloud-sd too (the co-located baseline: the server drafts with MODEL, transformers, in --dtype on "
        "--device, between its target forwards)",
    )
    add_exit_argument(serve)
    add_server_security_arguments(serve)
    add_replica_arguments(serve)
    serve.set_defaults(handler=cmd_serve)


def _add_admission_arguments(serve: argparse.ArgumentParser) -> None:
    admission = serve.add_argument_group("admission control (memory stays bounded whatever clients do)")
    admission.add_argument(
        "--max-sessions",
        type=int,
        default=None,
        help="open sessions; one more is refused with BUSY (default: as many as fit their worst-case KV cache in "
        "memory beside the target, at most 64; the llama.cpp engine: 8, their KV allocated up front)",
    )
    admission.add_argument(
        "--max-queued",
        type=int,
        default=256,
        help="rounds waiting for the model; one more is refused with BUSY",
    )
    admission.add_argument(
        "--max-batch",
        type=int,
        default=32,
        help="sessions verified together in one forward pass (1: no batching)",
    )
    # Their defaults may come from the environment, so a server that `edgespec bench` starts can be set too.
    admission.add_argument(
        "--max-batch-rows",
        type=int,
        default=env_int("EDGESPEC_MAX_BATCH_ROWS", None),
        metavar="TOKEN_ROWS",
        help="cost budget of one forward pass in padded token-rows: rows x the longest row's fed tokens (rounds go "
        "first, oldest first; prefill chunks fill the rest). Bounds how long a round waits behind others' prefills "
        "(default: $EDGESPEC_MAX_BATCH_ROWS, else 512 on a CPU, --max-batch x --prefill-chunk on an accelerator; with "
        "--prefill-chunk on a 2-core CPU use 128)",
    )
    admission.add_argument(
        "--prefill-chunk",
        type=int,
        default=env_int("EDGESPEC_PREFILL_CHUNK", None),
        metavar="TOKENS",
        help="prompt tokens a prefill feeds per pass, riding with other sessions' rounds (0: each prefill runs alone, "
        "whole; default: $EDGESPEC_PREFILL_CHUNK, else 0 on a CPU and 128 on an accelerator)",
    )
    admission.add_argument(
        "--idle-timeout",
        type=float,
        default=120.0,
        help="seconds without a message before a session is ended (EXPIRED)",
    )
    admission.add_argument("--max-lifetime", type=float, default=3600.0, help="seconds a session may live")
    admission.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="on SIGTERM/SIGINT: health turns NOT_SERVING and new sessions are refused (BUSY) at once, and the open "
        "ones get up to S seconds to finish before the port closes; a second signal stops at once (default 10)",
    )
    admission.add_argument(
        "--prefix-cache-tokens",
        type=int,
        default=0,
        metavar="N",
        help="keep the KV of finished sessions (up to N tokens per auth identity) so a prompt extending one prefills "
        "only the rest; 0: off",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    if wants_replicas(args):
        return cmd_serve_replicas(args)

    import asyncio

    import torch

    from edgespec.models.exit_choice import resolve_exits
    from edgespec.models.loading import load_model
    from edgespec.prompting import eos_token_ids
    from edgespec.server.app import serve
    from edgespec.server.memory_budget import available_bytes, session_limit

    # Bad limits and security settings fail here, before minutes of model loading.
    config = server_config(args)
    from edgespec.engines.selection import choose_engine

    chosen = choose_engine(args.engine, args.target, args.device, args.exits)
    if chosen == "llamacpp":
        return _serve_on_llamacpp(args, config)
    if chosen == "paged":
        return _serve_on_paged(args, config)
    if args.threads:
        torch.set_num_threads(args.threads)
    available = available_bytes(args.device)  # before the target takes its share
    target = load_model(args.target, args.dtype)
    max_sessions = session_limit(
        args.max_sessions,
        target.model,
        config.limits.max_prompt_tokens,
        config.limits.max_new_tokens,
        available,
    )
    config = replace(config, admission=replace(config.admission, max_sessions=max_sessions))
    if args.device != "cpu":
        target.model.to(args.device)  # the verifier on an accelerator; verdicts stay on the CPU
    exits = resolve_exits(args.exits, target.model, args.target)
    cloud_draft = None
    if args.cloud_draft:
        from edgespec.server.cloud_draft import CloudDraft

        cloud_draft = CloudDraft.load(args.cloud_draft, args.dtype, args.device, max_batch=args.max_batch)
        cloud_draft.check_pairs_with(int(target.model.get_output_embeddings().weight.shape[0]))
    asyncio.run(
        serve(
            target.model,
            target.tokenizer,
            eos_token_ids(target.model, target.tokenizer),
            exits,
            config,
            target_name=f"{target.name} ({target.dtype})",
            cloud_draft=cloud_draft,
        )
    )
    return 0


# Sessions the llama.cpp engine holds without --max-sessions (a CPU engine: passes are compute bound).
LLAMACPP_DEFAULT_SESSIONS = 8
# Sequences kept beyond the sessions for finished sessions' prompt prefixes (sessions reclaim them).
PREFIX_SEQUENCES = 8


def _serve_on_llamacpp(args: argparse.Namespace, config: Any) -> int:
    """`serve` with the llama.cpp engine: the target's GGUF, no exits (the guess-based modes only)."""
    import asyncio
    import logging

    from edgespec.engines.selection import load_llamacpp_engine, tokenizer_and_eos
    from edgespec.server.app import serve

    if args.exits != "none":
        logging.getLogger(__name__).warning(
            "the llama.cpp engine has no exits: early verdicts are off (--exits %s ignored); sessions asking for "
            "them get none, and pre-drafting runs on send-time guesses",
            args.exits,
        )
    # llama.cpp allocates every session's KV (--session-context tokens) up front: few by default.
    sessions = args.max_sessions if args.max_sessions is not None else LLAMACPP_DEFAULT_SESSIONS
    config = replace(config, admission=replace(config.admission, max_sessions=sessions))
    # With a prefix store, a few sequences more keep finished sessions' prefixes (sessions reclaim them).
    stored = PREFIX_SEQUENCES if args.prefix_cache_tokens else 0
    engine = load_llamacpp_engine(args.target, sessions + stored, args.session_context, args.threads)
    tokenizer, eos_ids = tokenizer_and_eos(args.target)
    cloud_draft = None
    if args.cloud_draft:
        from edgespec.server.cloud_draft import CloudDraft

        cloud_draft = CloudDraft.load(args.cloud_draft, args.dtype, args.device, max_batch=args.max_batch)
    name = f"{engine.gguf_file.stem} (llama.cpp GGUF)"
    asyncio.run(serve(None, tokenizer, eos_ids, None, config, target_name=name, cloud_draft=cloud_draft, engine=engine))
    return 0


def _serve_on_paged(args: argparse.Namespace, config: Any) -> int:
    """`serve` with the paged engine: the target in `transformers` over one paged KV pool sized for
    --max-sessions sessions of --session-context tokens; no exits (the guess-based modes only)."""
    import asyncio
    import logging

    import torch

    from edgespec.engines.paged import PagedEngine, PoolSettings
    from edgespec.models.loading import load_model
    from edgespec.prompting import eos_token_ids
    from edgespec.server.app import serve
    from edgespec.server.limits import DEFAULT_MAX_SESSIONS

    if args.prefix_cache_tokens:
        raise ValueError("--prefix-cache-tokens is not available with the paged engine yet: use --engine transformers")
    if args.exits != "none":
        logging.getLogger(__name__).warning(
            "the paged engine has no exits: early verdicts are off (--exits %s ignored); pre-drafting runs on "
            "send-time guesses",
            args.exits,
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    sessions = args.max_sessions or DEFAULT_MAX_SESSIONS
    config = replace(config, admission=replace(config.admission, max_sessions=sessions))
    target = load_model(args.target, args.dtype)
    target.model.to(args.device)
    settings = PoolSettings(sessions=sessions + 1, session_tokens=args.session_context)  # + the engine's own
    engine = PagedEngine(target.model, settings, cuda_graphs=not args.no_cuda_graphs)
    cloud_draft = None
    if args.cloud_draft:
        from edgespec.server.cloud_draft import CloudDraft

        cloud_draft = CloudDraft.load(args.cloud_draft, args.dtype, args.device, max_batch=args.max_batch)
        cloud_draft.check_pairs_with(engine.vocab_size)
    name = f"{target.name} ({target.dtype}, paged)"
    eos_ids = eos_token_ids(target.model, target.tokenizer)
    asyncio.run(
        serve(None, target.tokenizer, eos_ids, None, config, target_name=name, cloud_draft=cloud_draft, engine=engine)
    )
    return 0


def server_config(args: argparse.Namespace) -> Any:
    """The `ServerConfig` the options describe; bad limits and security settings raise ValueError."""
    from edgespec.server.app import ServerConfig
    from edgespec.server.limits import DEFAULT_MAX_SESSIONS, AdmissionLimits

    prefill_chunk, max_batch_rows = AdmissionLimits.batch_budget(
        args.device,
        args.max_batch,
        args.prefill_chunk,
        args.max_batch_rows,
    )
    config = ServerConfig(
        host=args.host,
        port=args.port,
        limits=session_limits(args),
        admission=AdmissionLimits(
            # Without --max-sessions, the limit is derived from memory once the target has loaded.
            max_sessions=args.max_sessions if args.max_sessions is not None else DEFAULT_MAX_SESSIONS,
            max_queued=args.max_queued,
            max_batch=args.max_batch,
            max_batch_rows=max_batch_rows,
            prefill_chunk=prefill_chunk,
        ),
        max_message_bytes=args.max_message_bytes,
        security=server_security(args),
        prefix_cache_tokens=args.prefix_cache_tokens,
        exit_candidates=args.exit_vocab == "candidates",
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        drain_timeout_s=args.drain_timeout,
    )
    if not args.drain_timeout >= 0:
        raise ValueError(f"--drain-timeout must be >= 0 seconds, got {args.drain_timeout}")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise ValueError(f"--metrics-port must be a port number (0..65535), got {args.metrics_port}")
    if args.prefix_cache_tokens < 0:
        raise ValueError(f"--prefix-cache-tokens must be >= 0, got {args.prefix_cache_tokens}")
    return config
