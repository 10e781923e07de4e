"""What each side needs to authenticate the other: a shared bearer token checked on every stream,
and optional TLS. Plain data here; the server's check lives in server/auth.py, the client's channel
in client/channel.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

# The token travels as gRPC metadata `authorization: Bearer <token>`, the HTTP convention.
AUTH_METADATA_KEY = "authorization"
AUTH_SCHEME = "Bearer "
AUTH_TOKEN_ENV = "EDGESPEC_AUTH_TOKEN"


@dataclass(frozen=True)
class ServerSecurity:
    """``token``: required from every client when set. TLS when both PEM fields are set."""

    token: str | None = field(default=None, repr=False)
    certificate_chain: bytes | None = field(default=None, repr=False)
    private_key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.token is not None:
            check_token(self.token)
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("TLS needs both a certificate and its private key")

    @property
    def tls(self) -> bool:
        return self.certificate_chain is not None


@dataclass(frozen=True)
class ClientSecurity:
    """``token``: sent on every stream when set. ``tls``: verify the server against
    ``root_certificates`` (PEM), or the system's roots when None. ``server_name`` overrides the
    name checked against the server's certificate (a server reached by an address its
    certificate does not name, e.g. through a local link emulator)."""

    token: str | None = field(default=None, repr=False)
    tls: bool = False
    root_certificates: bytes | None = field(default=None, repr=False)
    server_name: str | None = None

    def __post_init__(self) -> None:
        if self.token is not None:
            check_token(self.token)
        if (self.root_certificates is not None or self.server_name is not None) and not self.tls:
            raise ValueError("a CA certificate or a TLS server name needs tls=True")


INSECURE = ClientSecurity()


def check_token(token: str) -> str:
    # gRPC metadata values are printable ASCII; anything else would fail deep inside the call.
    if not token:
        raise ValueError("the auth token is empty")
    if not all(0x21 <= ord(c) <= 0x7E for c in token):
        raise ValueError("the auth token must be printable ASCII without spaces")
    return token


def resolve_token(token: str | None, token_file: Path | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The token from, in order: the value given, the file given, the environment; else None.
    A file holds the token on its first line, so a trailing newline is fine."""
    if token is not None and token_file is not None:
        raise ValueError("give the auth token or a file holding it, not both")
    if token is None and token_file is not None:
        lines = token_file.read_text(encoding="ascii").splitlines()
        token = lines[0].strip() if lines else ""
        if not token:
            raise ValueError(f"the auth token file {token_file} is empty")
    if token is None:
        token = environ.get(AUTH_TOKEN_ENV) or None
    return check_token(token) if token is not None else None
