"""`edgespec generate`: one generation, over the network or in process, printed as it streams."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from edgespec.cli.options import (
    add_client_security_arguments,
    add_decoding_arguments,
    add_exit_argument,
    add_model_arguments,
    add_recovery_arguments,
    client_security,
    recovery_policy,
)
from edgespec.cli.printers import (
    ProvisionalPrinter,
    StreamPrinter,
    fallback_warning,
    format_logprobs,
    format_stats,
    logprobs_as_json,
)
from edgespec.models.presets import DEFAULT_DRAFT, DEFAULT_TARGET

if TYPE_CHECKING:  # heavy imports (torch, transformers) wait until a command needs them
    from edgespec.core.config import GenerationConfig, GenerationResult
    from edgespec.core.modes import Mode


def add_generate_parser(commands: Any) -> None:
    generate = commands.add_parser(
        "generate",
        help="generate text, over the network or in process (--local)",
        description="Generate text: the draft here proposes, the target verifies, over the network (--server) or in "
        "this process (--local). Committed text streams to stdout, the statistics to stderr.",
    )
    generate.add_argument("prompt", help="user message (chat-templated) or, with --raw, text to continue")
    where = generate.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="the verifier server (edgespec serve), or a link in front of it",
    )
    where.add_argument("--local", action="store_true", help="run target and draft in this process")
    generate.add_argument("--target", default=DEFAULT_TARGET, help="--local: preset name, HF model dir or .gguf file")
    generate.add_argument("--draft", default=DEFAULT_DRAFT, help="preset name, HF model dir or .gguf file")
    generate.add_argument(
        "--mode",
        default="sd-ee-pipelined",
        help="cloud-ar (or ar), edge-only, sd, sd-ee, sd-ee-predraft, sd-ee-pipelined, cloud-sd (the server drafts: "
        "it needs --cloud-draft)",
    )
    generate.add_argument(
        "--draft-backend",
        default="transformers",
        choices=["transformers", "llamacpp"],
        help="llamacpp: the same GGUF on llama.cpp (fast on CPUs)",
    )
    add_decoding_arguments(generate)
    add_model_arguments(generate)
    add_exit_argument(generate)
    generate.add_argument(
        "--link",
        choices=["lan", "wan", "cellular"],
        help="--local: charge this link's delay on the virtual clock (default: none)",
    )
    generate.add_argument("--raw", action="store_true", help="do not apply the chat template")
    generate.add_argument("--json", action="store_true", help="print one JSON object with tokens, text and stats")
    generate.add_argument(
        "--logprobs",
        type=int,
        metavar="N",
        help="--server: the target's log-probability of every token and its N likeliest alternatives (0-20), "
        'printed after the text (with --json: a "logprobs" list)',
    )
    generate.add_argument(
        "--json-schema",
        metavar="FILE",
        help="--server: the output follows this JSON schema (the target is constrained, losslessly)",
    )
    add_recovery_arguments(generate)
    add_client_security_arguments(generate)
    generate.set_defaults(handler=cmd_generate)


def generation_config(args: argparse.Namespace, eos_ids: Any) -> GenerationConfig:
    """The decoding options of `generate` as the library's config."""
    from edgespec.core.config import GenerationConfig, SamplingParams

    return GenerationConfig(
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
        eos_ids=eos_ids,
        logprobs=getattr(args, "logprobs", None),
    )


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from edgespec.core.modes import Mode
    from edgespec.models.loading import load_draft, load_model, load_tokenizer
    from edgespec.prompting import eos_token_ids, render_prompt

    # Bad security settings fail here, before the models load.
    security = None if args.local else client_security(args)
    if (args.logprobs is not None or args.json_schema) and args.local:
        print(
            "edgespec: error: --logprobs and --json-schema need the verifier: use them with --server", file=sys.stderr
        )
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    mode = Mode.parse(args.mode)
    draft_runtime, tokenizer, target = None, None, None
    if mode.uses_draft or (args.local and mode.server_drafts):  # in process, cloud-sd's draft is the "server's"
        draft_runtime, tokenizer = load_draft(args.draft, args.draft_backend, args.dtype, threads=args.threads or 1)
    if args.local:
        target = load_model(args.target, args.dtype)
        tokenizer, eos_source = target.tokenizer, target.model
    else:
        tokenizer = tokenizer or load_tokenizer(args.draft)
        eos_source = getattr(draft_runtime, "model", None)
    prompt_ids = render_prompt(tokenizer, args.prompt, raw=args.raw)
    # Over the network the server's EOS set decides; this one serves edge-only and --local.
    config = generation_config(args, eos_token_ids(eos_source, tokenizer))
    if args.json_schema:
        config = _with_json_schema(config, args.json_schema, tokenizer)
    on_commit = None if args.json else StreamPrinter(tokenizer)
    # Provisional tokens (the draft's, during an outage) and their retractions go to stderr.
    on_event = None if args.json else ProvisionalPrinter(tokenizer, sys.stderr)
    if args.local:
        result = _generate_local(args, target, draft_runtime, prompt_ids, mode, config, on_commit)
    else:
        from edgespec.client.edge_client import ClientOptions, ConnectionLost, EdgeClient, ServerError

        assert security is not None
        options = ClientOptions(recovery=recovery_policy(args), security=security)
        try:
            result = EdgeClient(args.server, draft_runtime, options, tokenizer).generate(
                prompt_ids,
                mode,
                config,
                on_commit,
                on_event,
            )
        except (ConnectionLost, ServerError) as error:
            _print_partial(args, tokenizer, error.partial, error)
            return 3
    _print_result(args, tokenizer, result)
    return 0


def _with_json_schema(config: GenerationConfig, path: str, tokenizer: Any) -> GenerationConfig:
    """``config`` under the schema in ``path`` (read and checked here: a bad file fails before any session)."""
    from dataclasses import replace
    from pathlib import Path

    from edgespec.core.grammar import Grammar
    from edgespec.decoding.grammar import check_grammar, tokenizer_fingerprint

    grammar = Grammar("json_schema", Path(path).read_text(encoding="utf-8"), tokenizer_fingerprint(tokenizer))
    check_grammar(grammar, tokenizer, sorted(config.eos_ids))
    return replace(config, grammar=grammar)


def _generate_local(
    args: argparse.Namespace,
    target: Any,
    draft_runtime: Any,
    prompt_ids: list[int],
    mode: Mode,
    config: GenerationConfig,
    on_commit: Any,
) -> GenerationResult:
    """Target and draft in this process, on the virtual clock (charged a link's delay with --link)."""
    from edgespec.drivers.local_engine import LocalEngine
    from edgespec.drivers.virtual_devices import Link
    from edgespec.link import resolve_profile
    from edgespec.models.exit_choice import resolve_exits
    from edgespec.models.target import TargetRuntime

    exits = resolve_exits(args.exits, target.model, args.target) if mode.uses_exits else None
    link = Link()
    if args.link:  # the link on the virtual clock: its mean one-way delay per message
        profile = resolve_profile(args.link, {})
        link = Link(
            one_way_s=profile.one_way_delay_ms / 1000,
            bandwidth_bytes_per_s=profile.bytes_per_second or float("inf"),
        )
    engine = LocalEngine(TargetRuntime(target.model, exits), draft_runtime, link)
    return engine.generate(prompt_ids, mode, config, on_commit)


def _print_partial(
    args: argparse.Namespace, tokenizer: Any, partial: GenerationResult | None, error: Exception
) -> None:
    """What the generation committed before the server was lost for good."""
    if partial is not None:
        partial.text = tokenizer.decode(partial.tokens, skip_special_tokens=True)
        if args.json:
            stats = partial.stats.as_dict()
            print(json.dumps({"tokens": partial.tokens, "text": partial.text, "stats": stats, "error": str(error)}))
        else:
            print()
    print(
        f"edgespec: error: {error} (the {len(partial.tokens) if partial else 0} tokens committed before it are kept "
        "above)",
        file=sys.stderr,
    )


def _print_result(args: argparse.Namespace, tokenizer: Any, result: GenerationResult) -> None:
    result.text = tokenizer.decode(result.tokens, skip_special_tokens=True)
    if args.json:
        printed = {"tokens": result.tokens, "text": result.text, "stats": result.stats.as_dict()}
        if result.logprobs is not None:
            printed["logprobs"] = logprobs_as_json(result.logprobs, tokenizer)
        print(json.dumps(printed))
    else:
        print()
        if result.logprobs is not None:
            print(format_logprobs(result.logprobs, tokenizer), file=sys.stderr)
        print(format_stats(result.stats), file=sys.stderr)
    if result.stats.fallback_tokens:
        print(fallback_warning(result.stats), file=sys.stderr)
