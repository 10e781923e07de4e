"""`edgespec serve --replicas N`: N verifier replicas behind one address, placed, health-checked,
restarted and (optionally) autoscaled by Ray Serve.

Ray Serve's gRPC proxy carries bidirectional streams (added in 2026, ray-project/ray PRs
60767-60771; checked for real with Ray 2.60.0 here): each edgespec session is one stream, routed
when it opens to the replica with fewer ongoing requests (Serve's power-of-two-choices router) and
pinned there for its life. A replica that dies breaks its streams; the client re-opens with its
committed text through the same address and lands on a live replica, while Serve starts a
replacement.

This module starts a local Ray cluster (this machine only), runs the application, waits for
Ctrl-C / SIGTERM and takes everything down again. `serve_config` writes the same deployment as
a Serve config file for `serve deploy` on a real cluster.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgespec.server.replica_spec import DEPLOYMENT_NAME, ReplicaSpec

if TYPE_CHECKING:
    from edgespec.server.tls_front import TlsFront

__all__ = [
    "APP_NAME",
    "ClusterConfig",
    "ReplicaSpec",
    "check_exposure",
    "run_cluster",
    "serve_config",
    "write_serve_config",
]
logger = logging.getLogger(__name__)

# What Ray Serve's gRPC proxy registers: the generated servicer adder of our one service.
GRPC_SERVICER_FUNCTION = "edgespec.transport.edgespec_pb2_grpc.add_VerifierServicer_to_server"
APP_NAME = "edgespec"

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
# A replica's graceful stop waits this long for its open sessions; their clients resume elsewhere.
GRACEFUL_SHUTDOWN_S = 5.0


@dataclass(frozen=True)
class ClusterConfig:
    """How many replicas and where the cluster listens. ``replicas`` fixed, or ``min_replicas``..
    ``max_replicas`` with Serve's autoscaler aiming at ``sessions_per_replica`` open sessions each."""

    spec: ReplicaSpec
    port: int = 50051
    host: str = "127.0.0.1"
    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    sessions_per_replica: float = 8.0
    # Serve's graceful_shutdown_timeout_s: how long a stopping replica waits for its open sessions.
    drain_timeout_s: float = GRACEFUL_SHUTDOWN_S
    # Applied by Ray Serve's proxy (RAY_SERVE_GRPC_MAX_MESSAGE_SIZE): bigger is RESOURCE_EXHAUSTED.
    max_message_bytes: int = 4 * 1024 * 1024
    # TLS: Ray's proxy has none, so nginx terminates it on host:port (see tls_front.py).
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"--replicas must be at least 1, got {self.replicas}")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("--min-replicas and --max-replicas go together")
        if self.min_replicas is not None and self.max_replicas is not None:
            if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
                raise ValueError(
                    "need 0 <= --min-replicas <= --max-replicas and --max-replicas >= 1, "
                    f"got {self.min_replicas}..{self.max_replicas}"
                )
        if self.sessions_per_replica <= 0:
            raise ValueError(f"--sessions-per-replica must be > 0, got {self.sessions_per_replica}")
        if (self.tls_certificate is None) != (self.tls_private_key is None):
            raise ValueError("--tls-cert and --tls-key go together")

    @property
    def tls(self) -> bool:
        return self.tls_certificate is not None

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas is not None

    @property
    def most_replicas(self) -> int:
        return self.max_replicas if self.max_replicas is not None else self.replicas


def deployment_options(config: ClusterConfig) -> dict[str, Any]:
    """The Verifier deployment's Serve options, shared by the local cluster and the config file."""
    spec = config.spec
    options: dict[str, Any] = {
        # One ongoing request = one open session; past the verifier's own admission limit a new
        # session would only be refused with BUSY, so Serve queues it for another replica instead.
        "max_ongoing_requests": spec.max_sessions,
        "graceful_shutdown_timeout_s": config.drain_timeout_s,
        "health_check_period_s": 2.0,
        "health_check_timeout_s": 30.0,
        # A replica holds one target: one accelerator, or one CPU's worth of forwards here.
        "ray_actor_options": {
            "num_cpus": 0 if spec.device.startswith("cuda") else 1,
            "num_gpus": 1 if spec.device.startswith("cuda") else 0,
        },
    }
    if config.autoscaling:
        options["autoscaling_config"] = {
            "min_replicas": config.min_replicas,
            "max_replicas": config.max_replicas,
            "target_ongoing_requests": config.sessions_per_replica,
        }
    else:
        options["num_replicas"] = config.replicas
    return options


def serve_config(config: ClusterConfig) -> dict[str, Any]:
    """A Serve config (`serve deploy FILE` / `serve run FILE`) with the same deployment; the auth
    token stays out of it (replicas read ``auth_token_file`` or $EDGESPEC_AUTH_TOKEN)."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "127.0.0.1", "port": 8000},
        "grpc_options": {"port": config.port, "grpc_servicer_functions": [GRPC_SERVICER_FUNCTION]},
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": f"/{APP_NAME}",
                "import_path": "edgespec.server.ray_deployment:build_app",
                "args": config.spec.as_args(with_token=False),
                "deployments": [{"name": DEPLOYMENT_NAME, **deployment_options(config)}],
            }
        ],
    }


def write_serve_config(config: ClusterConfig, path: Path) -> Path | None:
    """The Serve config at ``path``; with TLS also the nginx front's config beside it (returned)."""
    import yaml

    header = (
        "# edgespec verifier replicas on Ray Serve: `serve deploy THIS_FILE` on a running Ray cluster\n"
        "# (every node needs `pip install edgespec[cluster]` and the target's weights).\n"
        "# Clients connect to any node's gRPC proxy port below; the auth token comes from\n"
        "# args.auth_token_file or $EDGESPEC_AUTH_TOKEN in the replicas' environment.\n"
    )
    path.write_text(header + yaml.safe_dump(serve_config(config), sort_keys=False))
    if not config.tls:
        return None
    from edgespec.server.tls_front import nginx_config

    assert config.tls_certificate is not None and config.tls_private_key is not None
    front = path.with_name(path.stem + "-tls-nginx.conf")
    workdir = Path("/var/lib/edgespec-nginx")
    # On an ingress host the upstreams are the Ray nodes' proxies (add a `server` line per node to
    # its upstream block); 127.0.0.1 when nginx runs on the head node.
    front.write_text(
        nginx_config(
            "0.0.0.0",
            443,
            [f"127.0.0.1:{config.port}"],
            config.tls_certificate.resolve(),
            config.tls_private_key.resolve(),
            workdir,
            config.spec.idle_timeout_s,
        )
    )
    return front


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def check_exposure(config: ClusterConfig, token: str | None) -> None:
    """Ray Serve's gRPC proxy binds every interface ([::]:PORT; Ray has no bind-address option),
    unlike `edgespec serve`, which binds --host. An open port without a token must be asked for."""
    if token is None and config.host in LOOPBACK_HOSTS:
        raise ValueError(
            "with --replicas, Ray Serve's gRPC proxy listens on every interface, not just --host; "
            "set an auth token (--auth-token-file or $EDGESPEC_AUTH_TOKEN), "
            "or pass --host 0.0.0.0 to accept an open port"
        )


def run_cluster(config: ClusterConfig) -> int:
    """Start a local Ray cluster with the verifier replicas; block until SIGINT/SIGTERM; stop it all."""
    # Every replica's session lines must reach this console: by default Ray folds similar lines
    # of different workers into one. Read once, when ray is imported.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Read by the proxy actor, a child process, when it imports Serve.
    os.environ["RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"] = str(config.max_message_bytes)
    try:
        import ray
        from ray import serve
    except ImportError:
        raise RuntimeError("--replicas needs Ray Serve: pip install 'edgespec[cluster]' (make install does)") from None
    from edgespec.server.ray_deployment import VerifierReplica

    token = config.spec.token()
    check_exposure(config, token)
    # With TLS, nginx holds the public port and Ray's proxy a free one behind it.
    proxy_port = _free_loopback_port() if config.tls else config.port
    front = None
    stop = threading.Event()
    # Ray's own processes (GCS, raylet, workers) are started by this one: a signal must end in
    # the shutdown below, never kill this process first and orphan them.
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGINT, signal.SIGTERM)}
    import psutil

    me = psutil.Process()
    try:
        # "local": always a new cluster of our own, never one another user started on this host.
        # Logical CPUs: one per replica at most (placement), whatever the host has.
        ray.init(
            address="local",
            num_cpus=max(config.most_replicas, os.cpu_count() or 1),
            include_dashboard=False,
            log_to_driver=True,
        )
        for signum in previous:  # ray.init installs its own SIGTERM handler; ours decides
            signal.signal(signum, lambda *_: stop.set())
        serve.start(
            http_options={"host": "127.0.0.1", "port": _free_loopback_port()},
            grpc_options={"port": proxy_port, "grpc_servicer_functions": [GRPC_SERVICER_FUNCTION]},
        )
        app = VerifierReplica.options(**deployment_options(config)).bind(config.spec.as_args(with_token=True))
        if not stop.is_set():
            serve.run(app, name=APP_NAME, route_prefix=f"/{APP_NAME}")
            where = f"port {proxy_port} (every interface)"
            if config.tls:
                front = _tls_front(config, proxy_port)
                front.wait_ready()
                where = (
                    f"{config.host}:{config.port} "
                    f"(TLS by nginx; Ray's plaintext proxy on port {proxy_port}, every interface)"
                )
            print(_serving_banner(config, where, token), flush=True)
        while not stop.wait(1.0):
            pass
        logger.info("stopping the replicas and the Ray cluster")
    finally:
        # Everything Ray started descends from this process: what survives its own shutdown
        # is killed by pid, so nothing is left behind.
        descendants = me.children(recursive=True)
        if front is not None:
            front.stop()
        try:
            serve.shutdown()
        except Exception:  # noqa: BLE001 (a half-started cluster still has to go)
            logger.exception("serve.shutdown failed")
        ray.shutdown()
        _reap(descendants + me.children(recursive=True))
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print("edgespec: stopped", flush=True)
    return 0


def _tls_front(config: ClusterConfig, proxy_port: int) -> TlsFront:
    """nginx on --host:--port terminating TLS in front of Ray's plaintext proxy on ``proxy_port``.
    Started, not yet waited for: `run_cluster` holds it first, so its shutdown stops a front that
    never became ready."""
    from edgespec.server.tls_front import TlsFront

    assert config.tls_certificate is not None and config.tls_private_key is not None
    return TlsFront(
        config.host,
        config.port,
        [f"127.0.0.1:{proxy_port}"],
        config.tls_certificate,
        config.tls_private_key,
        config.spec.idle_timeout_s,
    )


def _serving_banner(config: ClusterConfig, where: str, token: str | None) -> str:
    """The line that says the cluster serves (`edgespec bench` waits for "edgespec: serving"):
    where, how many replicas, and whether a token guards it."""
    count = (
        f"{config.min_replicas}..{config.max_replicas} replicas "
        f"(autoscaled, {config.sessions_per_replica:g} sessions each)"
        if config.autoscaling
        else f"{config.replicas} replicas"
    )
    guard = "auth token" if token else "no auth"
    return f"edgespec: serving {config.spec.target} on {where} with {count} via Ray Serve ({guard})"


def _reap(processes: list[Any], grace_s: float = 5.0) -> None:
    import psutil

    alive = [p for p in {p.pid: p for p in processes}.values() if p.is_running()]
    for process in alive:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, stubborn = psutil.wait_procs(alive, timeout=grace_s)
    for process in stubborn:
        logger.warning("killing %s (pid %d), still alive after shutdown", process.name(), process.pid)
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
