"""`edgespec serve --replicas N` and its options: the flags parsed into a `ClusterConfig`, then
a local Ray cluster started (or a Serve config written) by `edgespec.server.replicas`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgespec.cli.options import server_security
from edgespec.server.replica_spec import ReplicaSpec
from edgespec.server.replicas import ClusterConfig, run_cluster, write_serve_config
from edgespec.transport.security import resolve_token


def add_replica_arguments(parser: Any) -> None:
    group = parser.add_argument_group(
        "replicas (Ray Serve)",
        "several verifier replicas of the same target behind --port: sessions go to the least-loaded replica and "
        "survive a lost one (the client re-opens through the same address). Needs `pip install edgespec[cluster]`.",
    )
    group.add_argument("--replicas", type=int, metavar="N", help="run N replicas on a local Ray cluster")
    group.add_argument(
        "--min-replicas",
        type=int,
        metavar="N",
        help="autoscale: at least N replicas (with --max-replicas)",
    )
    group.add_argument("--max-replicas", type=int, metavar="N", help="autoscale: at most N replicas")
    group.add_argument(
        "--sessions-per-replica",
        type=float,
        default=8.0,
        metavar="S",
        help="autoscale: aim at S open sessions per replica (default 8)",
    )
    group.add_argument(
        "--write-serve-config",
        type=Path,
        metavar="YAML",
        help="write the deployment as a Ray Serve config for a real cluster, and exit",
    )


def wants_replicas(args: Any) -> bool:
    flags = (args.replicas, args.min_replicas, args.max_replicas, args.write_serve_config)
    return any(value is not None for value in flags)


def cluster_config(args: Any) -> ClusterConfig:
    """The cluster `edgespec serve` flags describe; bad combinations fail before anything starts."""
    from edgespec.server.limits import DEFAULT_MAX_SESSIONS, AdmissionLimits

    server_security(args)  # the certificate and key are a PEM pair, the token well-formed
    token_file = str(args.auth_token_file.resolve()) if args.auth_token_file else ""
    token = resolve_token(args.auth_token, None) if args.auth_token else None
    prefill_chunk, max_batch_rows = AdmissionLimits.batch_budget(
        args.device,
        args.max_batch,
        args.prefill_chunk,
        args.max_batch_rows,
    )
    spec = ReplicaSpec(
        target=args.target,
        dtype=args.dtype,
        exits=args.exits,
        device=args.device,
        threads=args.threads or 1,
        max_sessions=args.max_sessions if args.max_sessions is not None else DEFAULT_MAX_SESSIONS,
        max_queued=args.max_queued,
        max_batch=args.max_batch,
        max_batch_rows=max_batch_rows,
        prefill_chunk=prefill_chunk,
        prefix_cache_tokens=args.prefix_cache_tokens,
        exit_vocab=args.exit_vocab,
        max_prompt_tokens=args.max_prompt_tokens,
        max_new_tokens=args.max_new_tokens_limit,
        max_block=args.max_block,
        idle_timeout_s=args.idle_timeout,
        max_lifetime_s=args.max_lifetime,
        auth_token=token or "",
        auth_token_file=token_file,
    )
    return ClusterConfig(
        spec=spec,
        port=args.port,
        host=args.host,
        replicas=args.replicas if args.replicas is not None else 1,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        sessions_per_replica=args.sessions_per_replica,
        drain_timeout_s=args.drain_timeout,
        max_message_bytes=args.max_message_bytes,
        tls_certificate=args.tls_cert,
        tls_private_key=args.tls_key,
    )


def cmd_serve_replicas(args: Any) -> int:
    config = cluster_config(args)
    if args.write_serve_config is not None:
        front = write_serve_config(config, args.write_serve_config)
        print(f"edgespec: wrote {args.write_serve_config} (deploy with: serve deploy {args.write_serve_config})")
        if front is not None:
            print(f"edgespec: wrote {front}, the TLS front for nginx (Ray's proxy has no TLS)")
        return 0
    return run_cluster(config)
