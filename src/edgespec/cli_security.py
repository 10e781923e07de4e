"""Command-line options for auth, TLS and request limits, and their parsing into configs."""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path

from typing import TYPE_CHECKING

from edgespec.transport.security import AUTH_TOKEN_ENV, ClientSecurity, ServerSecurity, resolve_token

if TYPE_CHECKING:
    from edgespec.server.limits import SessionLimits


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_token_arguments(container: argparse._ActionsContainer, role: str) -> None:
    group = container.add_mutually_exclusive_group()
    group.add_argument(
        "--auth-token",
        metavar="TOKEN",
        help=f"{role}; visible to other local users in the process list, so prefer --auth-token-file or ${AUTH_TOKEN_ENV}",
    )
    group.add_argument("--auth-token-file", metavar="PATH", type=Path, help="a file whose first line is the token")


def add_server_security_arguments(parser: argparse.ArgumentParser) -> None:
    security = parser.add_argument_group(
        "security", f"an auth token (from --auth-token, --auth-token-file or ${AUTH_TOKEN_ENV}) and TLS are both optional"
    )
    add_token_arguments(security, "require this token from every client (metadata authorization: Bearer TOKEN)")
    security.add_argument("--tls-cert", metavar="PEM", type=Path, help="serve TLS with this certificate chain (needs --tls-key)")
    security.add_argument("--tls-key", metavar="PEM", type=Path, help="the certificate's private key")
    limits = parser.add_argument_group("limits", "requests beyond these get a TOO_LARGE error (or RESOURCE_EXHAUSTED for bytes)")
    limits.add_argument("--max-prompt-tokens", type=positive_int, default=8192, metavar="N", help="longest prompt, in tokens (default 8192)")
    limits.add_argument("--max-block", type=positive_int, default=64, metavar="N", help="most draft tokens in one block (default 64)")
    limits.add_argument("--max-new-tokens-limit", type=positive_int, default=4096, metavar="N", help="largest max_new_tokens a client may ask for (default 4096)")
    limits.add_argument("--max-message-bytes", type=positive_int, default=4 * 1024 * 1024, metavar="BYTES", help="largest message either way (default 4 MiB)")


def add_client_security_arguments(parser: argparse.ArgumentParser) -> None:
    security = parser.add_argument_group("security", f"for a server started with an auth token or TLS (token also from ${AUTH_TOKEN_ENV})")
    add_token_arguments(security, "send this token to the server")
    security.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's CA certificates")
    security.add_argument("--tls-ca", metavar="PEM", type=Path, help="connect with TLS, trusting this CA certificate (implies --tls)")
    security.add_argument("--tls-server-name", metavar="NAME", help="the name to expect in the server's certificate (implies --tls)")


def server_security(args: argparse.Namespace) -> ServerSecurity:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.tls_cert is not None:
        # gRPC would only say "failed to bind", and only after the model has loaded.
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(args.tls_cert, args.tls_key)
        except ssl.SSLError as error:
            raise ValueError(f"--tls-cert {args.tls_cert} / --tls-key {args.tls_key} are not a PEM certificate and its key: {error}") from None
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
