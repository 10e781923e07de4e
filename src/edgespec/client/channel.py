"""The client's channel to a verifier: plain or TLS, with the auth token on every call."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import grpc

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


def open_channel(address: str, security: ClientSecurity = INSECURE, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    interceptors = [_BearerToken(security.token)] if security.token else None
    if not security.tls:
        return grpc.aio.insecure_channel(address, options=list(options), interceptors=interceptors)
    if security.server_name:
        options = [*options, ("grpc.ssl_target_name_override", security.server_name)]
    credentials = grpc.ssl_channel_credentials(root_certificates=security.root_certificates)
    return grpc.aio.secure_channel(address, credentials, options=list(options), interceptors=interceptors)


class _BearerToken(grpc.aio.StreamStreamClientInterceptor):
    # Metadata, not call credentials: gRPC sends call credentials only over TLS, and a token must
    # also work on a plain loopback or VPN link.
    def __init__(self, token: str) -> None:
        self._metadata = (AUTH_METADATA_KEY, AUTH_SCHEME + token)

    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request_iterator: Any
    ) -> Any:
        metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()), self._metadata)
        details = client_call_details._replace(metadata=metadata)
        return await continuation(details, request_iterator)
