"""The client's channel to a verifier, plain or TLS, and its Session streams, each with the auth token."""

from __future__ import annotations

from typing import Any, Sequence

import grpc

from edgespec.transport import edgespec_pb2_grpc as pb_grpc
from edgespec.transport.security import AUTH_METADATA_KEY, AUTH_SCHEME, INSECURE, ClientSecurity


def keepalive_options(keepalive_s: float, keepalive_timeout_s: float) -> list[tuple[str, int]]:
    timeout_ms = int(keepalive_timeout_s * 1000)
    return [
        ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", timeout_ms),
        # A keepalive ping can ride on a ping already in flight, which then times out after this
        # (60 s by default), not after keepalive_timeout: measured, a silent link went unnoticed
        # until the read deadline without it.
        ("grpc.http2.ping_timeout_ms", timeout_ms),
        # Keep pinging through a long verify, when no data flows either way.
        ("grpc.http2.max_pings_without_data", 0),
        # gRPC shares connections between channels to the same address; a reconnect must not be
        # handed the dead connection it is fleeing.
        ("grpc.use_local_subchannel_pool", 1),
    ]


def open_channel(
    address: str, security: ClientSecurity = INSECURE, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    if not security.tls:
        return grpc.aio.insecure_channel(address, options=list(options))
    if security.server_name:
        options = [*options, ("grpc.ssl_target_name_override", security.server_name)]
    credentials = grpc.ssl_channel_credentials(root_certificates=security.root_certificates)
    return grpc.aio.secure_channel(address, credentials, options=list(options))


def session_call(channel: grpc.aio.Channel, security: ClientSecurity = INSECURE) -> grpc.aio.StreamStreamCall:
    """A Session stream on ``channel`` carrying the auth token in its metadata. Metadata, not call
    credentials: gRPC sends call credentials only over TLS, and a token must also work on a plain
    loopback or VPN link. Not a channel interceptor either: grpc.aio passes an intercepted
    stream's every write through an internal queue and request-iterator task."""
    metadata = ((AUTH_METADATA_KEY, AUTH_SCHEME + security.token),) if security.token else None
    return pb_grpc.VerifierStub(channel).Session(metadata=metadata)
