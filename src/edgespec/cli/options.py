"""The options several commands share (models, exits, decoding and round policy, recovery,
auth/TLS and request limits), defined once so their names, defaults and help stay the same
everywhere, and their parsing into the library's configs."""

from __future__ import annotations

import argparse
import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from edgespec.core.config import GenerationConfig
from edgespec.transport.security import AUTH_TOKEN_ENV, ClientSecurity, ServerSecurity, resolve_token

if TYPE_CHECKING:  # heavy imports wait until a command needs them
    from edgespec.client.recovery import RecoveryPolicy
    from edgespec.server.limits import SessionLimits

_ROUND_DEFAULTS = GenerationConfig()


def env_int(name: str, default: int | None) -> int | None:
    """An integer default from the environment, so a server that `edgespec bench` starts can be set too."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"edgespec: ${name} must be an integer, got {value!r}") from None


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# --------------------------------------------------------------------------- models and exits


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float32"],
        help="auto: bf16 where the CPU has it natively, else fp32",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")


def add_exit_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--exits",
        default="auto",
        help="'auto' (the trained heads shipped for a preset target, else logit lens at 1/2, 3/4 and 6/7 of the "
        "layers), 'none', a heads directory, or logit-lens:L1,L2,...",
    )


DEFAULT_EXIT_LAYERS = "16,20,22,24,26"


def exit_layers(text: str) -> tuple[int, ...]:
    """``--layers`` of the exit commands: comma-separated 1-based layers, sorted and distinct."""
    try:
        layers = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"layers must be comma-separated integers, got {text!r}") from None
    if not layers:
        raise argparse.ArgumentTypeError("at least one exit layer is needed")
    return layers


# --------------------------------------------------------------------------- decoding and rounds


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument(
        "--gamma",
        type=int,
        default=4,
        help="draft tokens per round (with --adaptive-gamma: the first round's)",
    )
    parser.add_argument(
        "--adaptive-gamma",
        action="store_true",
        help="choose each round's gamma from measured acceptance, draft, verify and link costs",
    )
    parser.add_argument("--max-gamma", type=int, default=8, help="the longest block --adaptive-gamma may choose")
    add_round_policy_arguments(parser)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)


def add_round_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """The round policy every command that runs rounds takes (`generate`, `bench`, `simulate`)."""
    parser.add_argument(
        "--branches",
        type=int,
        default=_ROUND_DEFAULTS.branches,
        help="pre-draft modes: branches per round, each on one assumed verdict",
    )
    parser.add_argument(
        "--early-verdicts",
        choices=["auto", "on", "off"],
        default="auto",
        help="pre-draft modes: ask the server to run its exits (auto: only where nothing else gives a verdict to "
        "pre-draft on)",
    )
    parser.add_argument(
        "--no-guess",
        action="store_true",
        help="pre-draft modes: pre-draft on early verdicts only (the paper's method), not on the draft's own guess at "
        "send time",
    )
    parser.add_argument(
        "--runner-up",
        action="store_true",
        help="pre-draft modes: also draft runner-up branches (a rejection where the draft was least sure, corrected "
        "to its runner-up) in the branches the guess leaves; pays where the edge has its own memory",
    )
    parser.add_argument(
        "--draft-stop",
        type=float,
        default=_ROUND_DEFAULTS.draft_stop,
        help="greedy: end a block after a token the draft gives less than this probability (a dynamic draft length; "
        "0: always the full gamma)",
    )


# --------------------------------------------------------------------------- network failures


def add_recovery_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("network failures (--server)")
    from edgespec.client.recovery import RecoveryPolicy

    default = RecoveryPolicy()
    group.add_argument(
        "--retries",
        type=int,
        default=default.retries,
        help="quick reconnect attempts per outage (exponential backoff with jitter) before provisional text",
    )
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
        help="past the retries, go on with PROVISIONAL tokens from the draft alone (shown dim on stderr), re-verified "
        "by the target when the server returns; --no-provisional shows nothing provisional, keeps trying within the "
        "outage budget, then exits with code 3",
    )
    group.add_argument(
        "--probe-interval",
        type=float,
        default=default.probe_interval_s,
        metavar="S",
        help="during an outage, try the server this often",
    )


def recovery_policy(args: argparse.Namespace) -> RecoveryPolicy:
    from edgespec.client.recovery import RecoveryPolicy

    return RecoveryPolicy(
        retries=args.retries,
        outage_budget_s=args.outage_budget,
        fallback=args.fallback,
        probe_interval_s=args.probe_interval,
    )


# --------------------------------------------------------------------------- auth, TLS and limits


def add_token_arguments(container: argparse._ActionsContainer, role: str) -> None:
    group = container.add_mutually_exclusive_group()
    group.add_argument(
        "--auth-token",
        metavar="TOKEN",
        help=f"{role}; visible to other local users in the process list, so prefer --auth-token-file or "
        f"${AUTH_TOKEN_ENV}",
    )
    group.add_argument("--auth-token-file", metavar="PATH", type=Path, help="a file whose first line is the token")


def add_server_security_arguments(parser: argparse.ArgumentParser) -> None:
    security = parser.add_argument_group(
        "security",
        f"an auth token (from --auth-token, --auth-token-file or ${AUTH_TOKEN_ENV}) and TLS are both optional",
    )
    add_token_arguments(security, "require this token from every client (metadata authorization: Bearer TOKEN)")
    security.add_argument(
        "--tls-cert",
        metavar="PEM",
        type=Path,
        help="serve TLS with this certificate chain (needs --tls-key)",
    )
    security.add_argument("--tls-key", metavar="PEM", type=Path, help="the certificate's private key")
    limits = parser.add_argument_group(
        "limits",
        "requests beyond these get a TOO_LARGE error (or RESOURCE_EXHAUSTED for bytes)",
    )
    limits.add_argument(
        "--max-prompt-tokens",
        type=positive_int,
        default=8192,
        metavar="N",
        help="longest prompt, in tokens (default 8192)",
    )
    limits.add_argument(
        "--max-block",
        type=positive_int,
        default=64,
        metavar="N",
        help="most draft tokens in one block (default 64)",
    )
    limits.add_argument(
        "--max-new-tokens-limit",
        type=positive_int,
        default=4096,
        metavar="N",
        help="largest max_new_tokens a client may ask for (default 4096)",
    )
    limits.add_argument(
        "--max-message-bytes",
        type=positive_int,
        default=4 * 1024 * 1024,
        metavar="BYTES",
        help="largest message either way (default 4 MiB)",
    )


def add_client_security_arguments(parser: argparse.ArgumentParser) -> None:
    security = parser.add_argument_group(
        "security",
        f"for a server started with an auth token or TLS (token also from ${AUTH_TOKEN_ENV})",
    )
    add_token_arguments(security, "send this token to the server")
    security.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's CA certificates")
    security.add_argument(
        "--tls-ca",
        metavar="PEM",
        type=Path,
        help="connect with TLS, trusting this CA certificate (implies --tls)",
    )
    security.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="the name to expect in the server's certificate (implies --tls)",
    )


def server_security(args: argparse.Namespace) -> ServerSecurity:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.tls_cert is not None:
        for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
            if not path.is_file():  # ssl's own error would not say which file
                raise ValueError(f"{flag} {path}: no such file")
        # gRPC would only say "failed to bind", and only after the model has loaded.
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(args.tls_cert, args.tls_key)
        except ssl.SSLError as error:
            raise ValueError(
                f"--tls-cert {args.tls_cert} / --tls-key {args.tls_key} are not a PEM certificate and its key: {error}"
            ) from None
    return ServerSecurity(
        token=resolve_token(args.auth_token, args.auth_token_file),
        certificate_chain=args.tls_cert.read_bytes() if args.tls_cert else None,
        private_key=args.tls_key.read_bytes() if args.tls_key else None,
    )


def client_security(args: argparse.Namespace) -> ClientSecurity:
    return ClientSecurity(
        token=resolve_token(args.auth_token, args.auth_token_file),
        tls=bool(args.tls or args.tls_ca or args.tls_server_name),
        root_certificates=args.tls_ca.read_bytes() if args.tls_ca else None,
        server_name=args.tls_server_name,
    )


def session_limits(args: argparse.Namespace) -> SessionLimits:
    from edgespec.server.limits import SessionLimits

    return SessionLimits(
        max_prompt_tokens=args.max_prompt_tokens,
        max_new_tokens=args.max_new_tokens_limit,
        max_block=args.max_block,
        idle_timeout_s=args.idle_timeout,
        max_lifetime_s=args.max_lifetime,
    )
