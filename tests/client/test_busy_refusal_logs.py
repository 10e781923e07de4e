"""What `generate` logs when the server refuses it BUSY (at its session limit): that the server is
busy and what the client retries, never that it is unreachable, and the fallback to provisional
tokens once per outage rather than once per refused re-open."""

from __future__ import annotations

import logging

import grpc
import pytest

from edgespec.client.edge_client import ClientOptions, EdgeClient
from edgespec.client.recovery import RecoveryPolicy
from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.limits import AdmissionLimits
from edgespec.server.servicer import VerifierService
from tests.support.tiny_models import qwen2_layer_skip_draft, qwen2_target
from tests.support.wire import RawSession, open_message

PROMPT = [3, 17, 42]
# Quick retries, quick probes, a short outage: the server stays busy throughout.
POLICY = RecoveryPolicy(
    retries=2, backoff_initial_s=0.01, backoff_max_s=0.02, probe_interval_s=0.05, outage_budget_s=0.8
)


def test_a_busy_server_is_logged_as_busy_and_the_fallback_once(caplog: pytest.LogCaptureFixture) -> None:
    service = VerifierService(
        TargetRuntime(qwen2_target()), None, frozenset(), admission=AdmissionLimits(max_sessions=1)
    )
    server = RunningServer(service, ServerConfig(port=0))
    address = f"127.0.0.1:{server.port}"
    try:
        with grpc.insecure_channel(address) as channel:
            holder = RawSession(channel)
            holder.send(open_message(PROMPT, 4))
            assert holder.receive().WhichOneof("kind") == "opened"
            client = EdgeClient(address, DraftRuntime(qwen2_layer_skip_draft()), ClientOptions(recovery=POLICY))
            with caplog.at_level(logging.INFO, logger="edgespec.client"):
                result = client.generate(PROMPT, Mode.SD, GenerationConfig(max_new_tokens=6))
            holder.cancel()
    finally:
        server.stop()
    assert result.stats.fallbacks >= 2, "the probe found the server each time: the outage went round more than once"
    messages = [(record.levelno, record.getMessage()) for record in caplog.records]
    assert not [text for _, text in messages if "unreachable" in text], messages
    lost = [text for level, text in messages if level == logging.WARNING and "is busy" in text]
    assert lost and "at its session or queue limit" in lost[0] and "limit of 1 open sessions" in lost[0]
    retries = [text for _, text in messages if text.startswith("reconnect attempt")]
    assert retries and all("busy server" in text for text in retries)
    fallbacks = [(level, text) for level, text in messages if "PROVISIONAL" in text]
    assert len(fallbacks) == result.stats.fallbacks
    assert [level for level, _ in fallbacks].count(logging.WARNING) == 1
