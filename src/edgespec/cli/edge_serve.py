"""`edgespec edge-serve`: an OpenAI-compatible HTTP server on the edge device."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any, Callable

from edgespec.cli.options import (
    add_client_security_arguments,
    add_model_arguments,
    add_recovery_arguments,
    client_security,
    positive_int,
    recovery_policy,
)
from edgespec.models.presets import DEFAULT_DRAFT
from edgespec.openai_api.limits import RequestLimits

logger = logging.getLogger(__name__)

API_KEY_ENV = "EDGESPEC_API_KEY"
# Generation slots when none is configured and memory allows more.
DEFAULT_SLOTS = 4
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def add_edge_serve_parser(subparsers: Any) -> None:
    """The `edge-serve` subcommand and its flags, with `cmd_edge_serve` as handler.

    Long because it declares every flag of the command, one statement each."""
    parser = subparsers.add_parser(
        "edge-serve",
        help="serve OpenAI's chat/completions API on the edge: draft here, verify in the cloud",
        description="An OpenAI-compatible HTTP server (POST /v1/chat/completions, /v1/completions, GET /v1/models, "
        "/health) on the edge device. Each request drafts locally and is verified by the cloud verifier (edgespec "
        f"serve) in its own session. --api-key (or --api-key-file, or ${API_KEY_ENV}) guards the local endpoint; "
        "--auth-token is the cloud's token and never leaves the device.",
    )
    parser.add_argument(
        "--server",
        required=True,
        metavar="HOST:PORT",
        help="the verifier (edgespec serve), or a link in front of it",
    )
    parser.add_argument(
        "--draft",
        default=DEFAULT_DRAFT,
        help="preset name, HF model dir or .gguf file (its tokenizer renders prompts)",
    )
    parser.add_argument("--draft-backend", default="transformers", choices=["transformers", "llamacpp"])
    parser.add_argument(
        "--mode",
        default="sd-ee-pipelined",
        help="cloud-ar, sd, sd-ee, sd-ee-predraft, sd-ee-pipelined (edge-only: not lossless)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="the HTTP address to bind (default loopback: apps on this device)",
    )
    parser.add_argument("--port", type=int, default=8000)
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument(
        "--api-key",
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' on /v1 (visible in the process list: prefer --api-key-file or "
        f"${API_KEY_ENV})",
    )
    keys.add_argument("--api-key-file", metavar="PATH", type=Path, help="a file whose first line is the API key")
    parser.add_argument(
        "--max-concurrent",
        type=positive_int,
        default=None,
        metavar="N",
        help="generations at once, each with its own draft KV cache and cloud session; more requests wait (default: as "
        f"many as fit their worst-case draft KV cache in memory, at most {DEFAULT_SLOTS}; llama.cpp: {DEFAULT_SLOTS}). "
        "llama.cpp loads one context per slot",
    )
    parser.add_argument(
        "--default-max-tokens",
        type=positive_int,
        default=256,
        metavar="N",
        help="max_tokens when a request names none",
    )
    parser.add_argument("--model-name", help="the model id to report (default: the target the verifier names)")
    parser.add_argument(
        "--gamma",
        type=int,
        default=4,
        help="draft tokens per round (with --adaptive-gamma: the first round's)",
    )
    parser.add_argument("--adaptive-gamma", action="store_true", help="choose each round's gamma from measured costs")
    parser.add_argument("--max-gamma", type=int, default=8)
    limits = parser.add_argument_group("request limits", "checked before a request costs a slot or a cloud session")
    limits.add_argument(
        "--max-body-bytes",
        type=positive_int,
        default=1024 * 1024,
        metavar="BYTES",
        help="a larger request body is refused with 413 (default 1 MiB)",
    )
    limits.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="a body not fully received after S seconds is refused with 408 (default 30)",
    )
    limits.add_argument(
        "--max-prompt-tokens",
        type=positive_int,
        default=None,
        metavar="N",
        help="the edge's own cap on prompt tokens, below the verifier's (default: the verifier's limit)",
    )
    probes = parser.add_argument_group("readiness (GET /ready)", "how /ready asks the cloud verifier's grpc.health.v1")
    probes.add_argument(
        "--ready-probe-interval",
        type=float,
        default=2.0,
        metavar="S",
        help="reuse the cloud's health answer for S seconds: /ready is never staler than that, and the verifier "
        "hears one check per S from this edge however often /ready is probed (default 2)",
    )
    probes.add_argument(
        "--ready-probe-timeout",
        type=float,
        default=1.0,
        metavar="S",
        help="a cloud that has not answered its health check after S seconds is not ready (default 1)",
    )
    add_model_arguments(parser)
    add_recovery_arguments(parser)
    add_client_security_arguments(parser)
    parser.set_defaults(handler=cmd_edge_serve)


def request_limits(args: argparse.Namespace) -> RequestLimits:
    """The request limits the flags name; bad values fail before any model loads."""
    return RequestLimits(
        max_body_bytes=args.max_body_bytes,
        body_timeout_s=args.body_timeout,
        max_prompt_tokens=args.max_prompt_tokens,
    )


def ready_probe(args: argparse.Namespace) -> Any:
    """How /ready asks the cloud (a ``ReadyProbe``); bad values fail before any model loads."""
    from edgespec.openai_api.cloud_health import ReadyProbe

    return ReadyProbe(interval_s=args.ready_probe_interval, timeout_s=args.ready_probe_timeout)


def resolve_api_key(key: str | None, key_file: Path | None) -> str | None:
    if key_file is not None:
        try:
            lines = key_file.read_text().splitlines()
        except OSError as error:
            raise ValueError(f"cannot read --api-key-file {key_file}: {error}") from None
        key = lines[0].strip() if lines else ""
        if not key:
            raise ValueError(f"--api-key-file {key_file} is empty")
    key = key if key is not None else os.environ.get(API_KEY_ENV) or None
    if key is not None and (not key.strip() or any(c.isspace() for c in key)):
        raise ValueError("the API key must be non-empty and contain no whitespace")
    return key


def load_drafts(
    draft: str, backend: str, dtype: str, threads: int, slots_for: Callable[[Any], int]
) -> tuple[list[Any], Any]:
    """Draft runtimes, as many as ``slots_for`` the first one says, and the tokenizer: transformers
    runtimes share one model's weights (each has its own KV cache); llama.cpp loads a context per slot."""
    from edgespec.models.draft import DraftRuntime
    from edgespec.models.loading import load_draft

    first, tokenizer = load_draft(draft, backend, dtype, threads=threads or 1)
    slots = slots_for(first)
    if backend == "transformers":
        return [first] + [DraftRuntime(first.model) for _ in range(slots - 1)], tokenizer
    return [first] + [load_draft(draft, backend, dtype, threads=threads or 1)[0] for _ in range(slots - 1)], tokenizer


def draft_slots(configured: int | None, draft: Any, max_prompt_tokens: int | None, available_before_load: int) -> int:
    """Generation slots: ``configured``, checked against memory, or as many draft KV caches as fit
    beside the draft (at most ``DEFAULT_SLOTS``). A llama.cpp draft sizes its own contexts."""
    import torch

    from edgespec.server.limits import SessionLimits
    from edgespec.server.memory_budget import KvBudget, cache_tokens, choose_limit, model_context

    model = getattr(draft, "model", None)
    if not isinstance(model, torch.nn.Module):
        return configured or DEFAULT_SLOTS
    # A slot's cache holds a prompt and its completion, within what the verifier admits by default.
    verifier = SessionLimits()
    prompt_tokens = max_prompt_tokens or verifier.max_prompt_tokens
    tokens = cache_tokens(prompt_tokens, verifier.max_new_tokens, model_context(model))
    return choose_limit(
        configured,
        KvBudget.for_model(model, tokens, available_before_load),
        DEFAULT_SLOTS,
        "slots",
        "--max-concurrent",
        "--max-prompt-tokens",
    )


def cmd_edge_serve(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from edgespec.client.edge_client import ClientOptions
    from edgespec.core.config import GenerationConfig
    from edgespec.core.modes import Mode
    from edgespec.models.loading import load_tokenizer
    from edgespec.openai_api.app import create_app
    from edgespec.openai_api.backend import BackendSettings, EdgeBackend
    from edgespec.prompting import eos_token_ids
    from edgespec.server.memory_budget import available_bytes

    # Bad settings fail here, before the draft loads.
    security = client_security(args)
    probe = ready_probe(args)
    api_key = resolve_api_key(args.api_key, args.api_key_file)
    mode = Mode.parse(args.mode)
    GenerationConfig(gamma=args.gamma, adaptive_gamma=args.adaptive_gamma, max_gamma=args.max_gamma)
    settings = BackendSettings(
        address=args.server,
        mode=mode,
        options=ClientOptions(recovery=recovery_policy(args), security=security),
        gamma=args.gamma,
        adaptive_gamma=args.adaptive_gamma,
        max_gamma=args.max_gamma,
        default_max_tokens=args.default_max_tokens,
        model_name=args.model_name,
    )
    if args.host not in LOOPBACK_HOSTS and api_key is None:
        logger.warning(
            "edge-serve on %s without --api-key: anyone who reaches the port can use the cloud verifier",
            args.host,
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    available = available_bytes("cpu")  # before the draft takes its share
    if mode.uses_draft:
        drafts, tokenizer = load_drafts(
            args.draft,
            args.draft_backend,
            args.dtype,
            args.threads,
            lambda first: draft_slots(args.max_concurrent, first, args.max_prompt_tokens, available),
        )
    else:
        drafts, tokenizer = [None] * (args.max_concurrent or DEFAULT_SLOTS), load_tokenizer(args.draft)
    eos = eos_token_ids(getattr(drafts[0], "model", None), tokenizer)
    backend = EdgeBackend(settings, tokenizer, drafts, fallback_eos_ids=eos)
    print(
        f"edgespec: edge-serve on http://{args.host}:{args.port}/v1 ({mode.value}, verifier {args.server}, "
        f"{len(drafts)} slots, {'API key required' if api_key else 'no API key'})",
        flush=True,
    )
    uvicorn.run(
        create_app(backend, api_key, request_limits(args), probe),
        host=args.host,
        port=args.port,
        log_level="info" if args.log or args.verbose else "warning",
    )
    return 0
