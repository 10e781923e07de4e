"""/ready follows the verifier within one probe interval: a real `edgespec serve` process on a
tiny checkpoint, edge-serve in front of it; kill -9 the verifier and /ready turns 503 (OpenAI's
error shape, naming the cloud's address) within the ready probe's interval, and a grpc.health.v1
check against the dead address fails, as `grpc_health_probe` would."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2

from edgespec.openai_api.cloud_health import ReadyProbe, serving_problem
from edgespec.transport.security import ClientSecurity
from tests.openai_api.test_openai_api import EdgeServe, edge_backend, raw
from tests.support.serve_process import ServeProcess, health_check

PROBE = ReadyProbe(interval_s=1.0, timeout_s=1.0)
# Loopback and a loaded 2-core host: what one /ready poll may add past the probe interval.
POLL_SLACK_S = 0.5


@pytest.fixture
def verifier(tmp_path: Path) -> Iterator[ServeProcess]:
    process = ServeProcess(tmp_path)
    yield process
    process.kill()


def wait_ready(url: str, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        status, _ = raw(f"{url}/ready", api_key=None)
        if status == 200 or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def test_a_killed_verifier_makes_ready_503_within_one_probe_interval(verifier: ServeProcess) -> None:
    edge = EdgeServe(edge_backend(verifier.address, slots=1), ready_probe=PROBE)
    try:
        assert wait_ready(edge.url, 30.0) == 200
        assert health_check(verifier.address) == health_pb2.HealthCheckResponse.SERVING
        verifier.kill()  # SIGKILL: no shutdown, no NOT_SERVING, the port simply goes
        killed = time.monotonic()
        while (reply := raw(f"{edge.url}/ready", api_key=None))[0] == 200:
            assert time.monotonic() - killed < PROBE.interval_s + POLL_SLACK_S, "/ready still 200"
            time.sleep(0.05)
        status, body = reply
        assert time.monotonic() - killed < PROBE.interval_s + PROBE.timeout_s + POLL_SLACK_S
        assert status == 503 and set(body) == {"error"}
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == "not_ready"
        assert verifier.address in error["message"] and "unreachable" in error["message"]
        assert health_check(verifier.address) == grpc.StatusCode.UNAVAILABLE
        problem = asyncio.run(serving_problem(verifier.address, ClientSecurity(), PROBE.timeout_s))
        assert problem is not None and "unreachable" in problem
    finally:
        edge.stop()


def test_ready_asks_the_cloud_at_most_once_per_interval(verifier: ServeProcess) -> None:
    """Probes faster than the interval reuse one answer, so a busy load balancer costs the cloud nothing."""
    edge = EdgeServe(edge_backend(verifier.address, slots=1), ready_probe=ReadyProbe(interval_s=60.0))
    try:
        assert wait_ready(edge.url, 30.0) == 200
        verifier.kill()
        # Within the (long) interval the last answer stands; this is the interval's price.
        assert raw(f"{edge.url}/ready", api_key=None)[0] == 200
    finally:
        edge.stop()
