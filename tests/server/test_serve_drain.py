"""`edgespec serve` on SIGTERM, for real (a child process on a tiny checkpoint): grpc.health.v1
turns NOT_SERVING at once and stays answerable while the open session finishes, a new session is
refused with BUSY ("shutting down"), and the process exits 0 as soon as the last session closes."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2

from edgespec.transport import edgespec_pb2 as pb
from tests.support.serve_process import ServeProcess, health_check
from tests.support.wire import RawSession, open_message

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def verifier(tmp_path: Path) -> Iterator[ServeProcess]:
    process = ServeProcess(tmp_path, "--drain-timeout", "60")
    yield process
    process.kill()


def test_sigterm_reports_not_serving_while_the_open_session_drains(verifier: ServeProcess) -> None:
    with grpc.insecure_channel(verifier.address) as channel:
        held = RawSession(channel, timeout_s=60)
        held.send(open_message([3, 5, 7], 4))
        assert held.receive().WhichOneof("kind") == "opened"
        assert health_check(verifier.address) == SERVING
        verifier.signal(signal.SIGTERM)
        assert verifier.wait_for("edgespec: draining 1 open sessions", 10.0)
        assert health_check(verifier.address) == NOT_SERVING
        late = RawSession(channel, timeout_s=10)
        late.send(open_message([3, 5, 7], 4))
        refusal = late.receive()
        assert refusal.WhichOneof("kind") == "error" and refusal.error.code == pb.BUSY
        assert "shutting down" in refusal.error.message
        assert verifier.process.poll() is None, "serve stopped with a session still open"
        closed = time.monotonic()
        held.send(pb.ClientMessage(close=pb.Close()))
        held.rest()
    assert verifier.process.wait(timeout=15) == 0
    assert time.monotonic() - closed < 15
    assert health_check(verifier.address) == grpc.StatusCode.UNAVAILABLE
