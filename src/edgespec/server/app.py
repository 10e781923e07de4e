"""Start a verifier server: load the target with its exits, bind, serve until stopped."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import grpc
from prometheus_client import disable_created_metrics

from edgespec.engines.interface import TargetEngine
from edgespec.engines.transformers_engine import TransformersEngine
from edgespec.models.exit_heads import ExitHeads
from edgespec.models.kv import kv_bytes_per_token
from edgespec.server.auth import TokenAuthInterceptor
from edgespec.server.cloud_draft import CloudDraft
from edgespec.server.health import VerifierHealth, add_probe_services
from edgespec.server.limits import AdmissionLimits, SessionLimits
from edgespec.server.memory_budget import cache_tokens, model_context
from edgespec.server.metrics import VerifierMetrics
from edgespec.server.servicer import VerifierService
from edgespec.transport import edgespec_pb2_grpc as pb_grpc
from edgespec.transport.security import ServerSecurity

logger = logging.getLogger(__name__)

# Draft blocks are small; generous limits still stop a runaway message early.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    limits: SessionLimits = SessionLimits()
    admission: AdmissionLimits = AdmissionLimits()
    # gRPC refuses a bigger message with RESOURCE_EXHAUSTED before it is decoded.
    max_message_bytes: int = MAX_MESSAGE_BYTES
    security: ServerSecurity = ServerSecurity()
    # KV of earlier prompts kept per tenant, so a prompt that extends one prefills only the rest
    # (server/prefix_cache.py); tokens held per tenant, 0: off.
    prefix_cache_tokens: int = 0
    # Exits score only the draft's candidate ids that blocks carry (False: the whole vocabulary).
    exit_candidates: bool = True
    # Prometheus' /metrics on this port (None: no metrics are kept), loopback unless told otherwise.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    # On SIGTERM/SIGINT: seconds the open sessions may take to finish while health says NOT_SERVING
    # and new sessions are refused (BUSY); a second signal stops at once.
    drain_timeout_s: float = 10.0


def build_server(service: VerifierService, config: ServerConfig) -> tuple[grpc.aio.Server, int, VerifierHealth]:
    """The gRPC server with the verifier, health and limits services, bound; its port and health servicer."""
    security = config.security
    server = grpc.aio.server(
        interceptors=[TokenAuthInterceptor(security.token, service.metrics.refused)] if security.token else None,
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            # Pings find a dead link (no RST ever arrives) within ~10 s, so its session is freed.
            ("grpc.keepalive_time_ms", 5_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ],
    )
    pb_grpc.add_VerifierServicer_to_server(service, server)
    health = add_probe_services(server, service, config.max_message_bytes)
    address = f"{config.host}:{config.port}"
    if security.tls:
        credentials = grpc.ssl_server_credentials([(security.private_key, security.certificate_chain)])
        try:
            port = server.add_secure_port(address, credentials)
        except RuntimeError as error:
            raise RuntimeError(
                f"cannot serve TLS on {address} (address in use, or a certificate and key that do not match?): {error}"
            ) from None
    else:
        if security.token and config.host not in LOOPBACK_HOSTS:
            logger.warning("an auth token without TLS crosses the network in clear text; add --tls-cert/--tls-key")
        port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"cannot bind {config.host}:{config.port}")
    return server, port, health


async def serve(
    model: object,
    tokenizer: object,
    eos_ids: frozenset[int],
    exits: ExitHeads | None,
    config: ServerConfig,
    target_name: str = "",
    ready: asyncio.Event | None = None,
    cloud_draft: CloudDraft | None = None,
    engine: TargetEngine | None = None,
) -> None:
    """``engine``: the target engine to serve (default: ``model`` with ``exits`` on transformers)."""
    service = VerifierService(
        engine if engine is not None else TransformersEngine(model, exits),  # type: ignore[arg-type]
        tokenizer,
        eos_ids,
        target_name,
        config.limits,
        config.admission,
        cloud_draft=cloud_draft,
        prefix_cache_tokens=config.prefix_cache_tokens,
        exit_candidates=config.exit_candidates,
        metrics=VerifierMetrics() if config.metrics_port is not None else None,
    )
    # A session's cache between batched passes keeps room to grow (`TrackedCache.stacked`).
    if engine is None:
        context = model_context(model)  # type: ignore[arg-type]
        longest = cache_tokens(config.limits.max_prompt_tokens, config.limits.max_new_tokens, context)
        worst_case = kv_bytes_per_token(model) * config.admission.max_sessions * longest
        kv_memory = f"worst-case KV memory {worst_case / 2**30:.1f} GiB"
    else:  # an engine of its own (llama.cpp) sizes its KV up front and logs its sequences and tokens
        kv_memory = f"KV allocated up front by the {engine.engine_name} engine"
    logger.info(
        "admission: %d sessions, %d queued rounds, batches of up to %d rows and %d padded token-rows, "
        "prefill chunks of %s; %s",
        config.admission.max_sessions,
        config.admission.max_queued,
        config.admission.max_batch,
        config.admission.max_batch_rows,
        config.admission.prefill_chunk or "the whole prompt (alone)",
        kv_memory,
    )
    server, port, health = build_server(service, config)
    await server.start()
    if config.metrics_port is not None:
        # This process exposes only these metrics: no `_created` series beside each counter and
        # histogram (Prometheus finds resets itself), a quarter of every scrape's samples.
        disable_created_metrics()
        service.metrics.serve_http(config.metrics_host, config.metrics_port)
    logger.info("serving %s on %s:%d (exits %s)", target_name, config.host, port, exits.layers if exits else "none")
    guards = (("TLS", config.security.tls), ("auth token", config.security.token))
    guard = ", ".join(name for name, on in guards if on) or "no TLS, no auth"
    print(f"edgespec: serving {target_name} on {config.host}:{port} ({guard})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await drain(service, health, config.drain_timeout_s)
        await server.stop(grace=1.0)
        service.shutdown()


async def drain(service: VerifierService, health: VerifierHealth, timeout_s: float) -> None:
    """Begin the shutdown: NOT_SERVING and no new sessions at once, so a load balancer probing
    health sends sessions elsewhere, then wait up to ``timeout_s`` for the open sessions to finish
    (a second SIGINT/SIGTERM ends the wait). Sessions still open afterwards are cut; their clients
    resume elsewhere with their committed text."""
    service.draining = True
    await health.enter_graceful_shutdown()
    if not service.sessions or timeout_s <= 0:
        return
    again = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, again.set)
        except (NotImplementedError, RuntimeError):
            pass
    logger.info("draining: %d open sessions have up to %g s to finish", len(service.sessions), timeout_s)
    print(f"edgespec: draining {len(service.sessions)} open sessions (up to {timeout_s:g} s)", flush=True)
    deadline = loop.time() + timeout_s
    while service.sessions and not again.is_set() and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if service.sessions:
        logger.warning("stopping with %d sessions still open: their clients resume elsewhere", len(service.sessions))


class RunningServer:
    """A server on its own event loop in a daemon thread: for tests and embedding."""

    def __init__(self, service: VerifierService, config: ServerConfig) -> None:
        import threading

        self.service = service
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._server: grpc.aio.Server | None = None
        self.port = 0
        self.health: VerifierHealth | None = None
        self._thread = threading.Thread(target=self._run, args=(config,), daemon=True, name="edgespec-server")
        self._thread.start()
        if not self._started.wait(timeout=30):
            raise RuntimeError("the server did not start within 30 s")

    def _run(self, config: ServerConfig) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server, self.port, self.health = build_server(self.service, config)
            await self._server.start()
            self._started.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def stop(self, grace: float | None = None) -> None:
        """Stop serving; ``grace=None`` kills open streams at once, like a crashed server."""
        if self._server is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._server.stop(grace), self._loop)
        future.result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self.service.shutdown()
        self._server = None
