"""`edgespec serve`'s operations flags: the metrics port is off unless asked for and binds loopback
by default; without --max-sessions the limit is left to memory (derived once the target loads)."""

from __future__ import annotations

import pytest

from edgespec.cli import build_parser
from edgespec.cli.serve import server_config
from edgespec.cli.serve_replicas import cluster_config
from edgespec.server.limits import DEFAULT_MAX_SESSIONS


def parse(*argv: str):  # type: ignore[no-untyped-def]
    return build_parser().parse_args(["serve", *argv])


def test_metrics_are_off_by_default_and_loopback_when_on() -> None:
    assert server_config(parse()).metrics_port is None
    config = server_config(parse("--metrics-port", "9464"))
    assert (config.metrics_port, config.metrics_host) == (9464, "127.0.0.1")
    assert server_config(parse("--metrics-port", "9464", "--metrics-host", "0.0.0.0")).metrics_host == "0.0.0.0"


def test_a_metrics_port_outside_the_port_range_is_refused() -> None:
    with pytest.raises(ValueError, match="--metrics-port"):
        server_config(parse("--metrics-port", "70000"))


def test_without_max_sessions_the_limit_is_left_to_memory() -> None:
    args = parse()
    assert args.max_sessions is None
    # A placeholder until the target has loaded and `session_limit` derives the real one.
    assert server_config(args).admission.max_sessions == DEFAULT_MAX_SESSIONS
    assert server_config(parse("--max-sessions", "5")).admission.max_sessions == 5
    assert cluster_config(parse("--replicas", "2")).spec.max_sessions == DEFAULT_MAX_SESSIONS
