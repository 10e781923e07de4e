"""serve's Prometheus metrics on a real gRPC server with the tiny target, scraped over HTTP: every
session counted by mode and outcome, refusals by reason, the tokens and rounds the target decided,
what the passes cost; the gauges describe the sessions open now and the KV they hold."""

from __future__ import annotations

import time
import urllib.request
from typing import Iterator

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgespec.client.edge_client import EdgeClient
from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.exits.heads import ExitHeads, ExitSpec
from edgespec.models.draft import DraftRuntime
from edgespec.models.kv import kv_bytes_per_token
from edgespec.models.target import TargetRuntime
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.limits import AdmissionLimits, SessionLimits
from edgespec.server.metrics import NoMetrics, VerifierMetrics
from edgespec.server.servicer import VerifierService
from edgespec.transport import edgespec_pb2 as pb
from tests.support.tiny_models import qwen2_layer_skip_draft, qwen2_target
from tests.support.wire import RawSession, block_message, open_message

PROMPT = [3, 17, 42, 8, 9]
NEW_TOKENS = 8
LIMITS = SessionLimits(max_new_tokens=64)
MAX_SESSIONS = 3


class Served:
    def __init__(self) -> None:
        model = qwen2_target()
        self.service = VerifierService(
            TargetRuntime(model, ExitHeads([ExitSpec(2)], model.config.hidden_size)),
            None,
            frozenset(),
            "tiny",
            LIMITS,
            AdmissionLimits(max_sessions=MAX_SESSIONS),
            metrics=VerifierMetrics(),
        )
        self.running = RunningServer(self.service, ServerConfig(port=0, limits=LIMITS))
        self.address = f"127.0.0.1:{self.running.port}"
        self.metrics_url = f"http://127.0.0.1:{self.service.metrics.serve_http('127.0.0.1', 0)}/metrics"

    def scrape_once_ended(self, sessions: float) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """A scrape once ``sessions`` sessions in all have ended: a client's generate returns when
        it has sent its close, a moment before the server's handler counts the session."""
        deadline = time.monotonic() + 10
        while True:
            samples = self.scrape()
            if ended(samples) >= sessions or time.monotonic() > deadline:
                return samples
            time.sleep(0.01)

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample by (name, sorted labels)."""
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            text = response.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    served = Served()
    yield served
    served.running.stop()


def ended(samples: dict) -> float:
    return sum(v for (name, _), v in samples.items() if name == "edgespec_verifier_sessions_total")


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def generate(served: Served, mode: Mode) -> list[int]:
    client = EdgeClient(served.address, DraftRuntime(qwen2_layer_skip_draft()))
    return client.generate(PROMPT, mode, GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=3)).tokens


def test_finished_sessions_are_counted_with_their_tokens_and_rounds(served: Served) -> None:
    before = served.scrape()
    assert len(generate(served, Mode.SD)) == NEW_TOKENS
    assert len(generate(served, Mode.CLOUD_AR)) == NEW_TOKENS
    after = served.scrape_once_ended(ended(before) + 2)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("edgespec_verifier_sessions_total", mode="speculative", outcome="finished") == 1
    assert grew("edgespec_verifier_sessions_total", mode="cloud_ar", outcome="finished") == 1
    assert grew("edgespec_verifier_committed_tokens_total", mode="speculative") == NEW_TOKENS
    assert grew("edgespec_verifier_committed_tokens_total", mode="cloud_ar") == NEW_TOKENS
    rounds = grew("edgespec_verifier_rounds_total", mode="speculative")
    accepted = grew("edgespec_verifier_accepted_tokens_total", mode="speculative")
    assert rounds >= 1 and grew("edgespec_verifier_accepted_tokens_per_round_count") == rounds
    assert grew("edgespec_verifier_accepted_tokens_per_round_sum") == accepted
    # A round commits its accepted tokens plus one (the last round may be clipped to the budget).
    assert accepted <= NEW_TOKENS - 1 and accepted <= grew("edgespec_verifier_drafted_tokens_total", mode="speculative")
    # Every decode and verify rode in a pass, each with its batch size and time; each job waited once.
    passes = grew("edgespec_verifier_pass_batch_size_count")
    assert passes >= rounds + NEW_TOKENS and grew("edgespec_verifier_pass_duration_seconds_count") == passes
    assert grew("edgespec_verifier_queue_wait_seconds_count") >= rounds + NEW_TOKENS
    fed = grew("edgespec_verifier_pass_tokens_total", kind="fed")
    assert grew("edgespec_verifier_pass_tokens_total", kind="padded") >= fed > 0


def test_refusals_are_counted_by_reason_and_as_refused_sessions(served: Served) -> None:
    before = served.scrape()
    with grpc.insecure_channel(served.address) as channel:
        too_long = RawSession(channel)
        too_long.send(open_message(PROMPT, LIMITS.max_new_tokens + 1))
        assert too_long.rest()[-1].error.code == pb.TOO_LARGE
        out_of_order = RawSession(channel)
        out_of_order.send(open_message(PROMPT, 4))
        assert out_of_order.receive().WhichOneof("kind") == "opened"
        out_of_order.send(block_message(5, [1]))
        assert out_of_order.rest()[-1].error.code == pb.OUT_OF_ORDER
    after = served.scrape_once_ended(ended(before) + 2)
    assert (
        value(after, "edgespec_verifier_refusals_total", reason="TOO_LARGE")
        - value(before, "edgespec_verifier_refusals_total", reason="TOO_LARGE")
        == 1
    )
    assert (
        value(after, "edgespec_verifier_refusals_total", reason="OUT_OF_ORDER")
        - value(before, "edgespec_verifier_refusals_total", reason="OUT_OF_ORDER")
        == 1
    )
    for outcome in ("refused", "error"):
        assert (
            value(after, "edgespec_verifier_sessions_total", mode="speculative", outcome=outcome)
            - value(before, "edgespec_verifier_sessions_total", mode="speculative", outcome=outcome)
            == 1
        )


def test_busy_refusals_and_resumed_sessions_are_counted(served: Served) -> None:
    before = served.scrape()
    with grpc.insecure_channel(served.address) as channel:
        holders = [RawSession(channel) for _ in range(MAX_SESSIONS)]
        for holder in holders:
            holder.send(open_message(PROMPT, 4, committed_ids=[5, 6]))
            assert holder.receive().WhichOneof("kind") == "opened"
        during = served.scrape()
        busy = RawSession(channel)
        busy.send(open_message(PROMPT, 4))
        assert busy.rest()[-1].error.code == pb.BUSY
        for holder in holders:
            holder.send(pb.ClientMessage(close=pb.Close()))
            holder.rest()
    after = served.scrape_once_ended(ended(before) + MAX_SESSIONS + 1)
    assert value(during, "edgespec_verifier_sessions_open") == MAX_SESSIONS
    assert value(during, "edgespec_verifier_session_limit") == MAX_SESSIONS
    # Each holder's cache holds its prompt and committed tokens but the last (prefilled, not yet scored).
    per_token = kv_bytes_per_token(served.service.runtime.model)
    assert value(during, "edgespec_verifier_kv_cache_bytes") == MAX_SESSIONS * (len(PROMPT) + 2 - 1) * per_token
    assert value(after, "edgespec_verifier_sessions_open") == 0
    assert value(after, "edgespec_verifier_kv_cache_bytes") == 0
    assert (
        value(after, "edgespec_verifier_refusals_total", reason="BUSY")
        - value(before, "edgespec_verifier_refusals_total", reason="BUSY")
        == 1
    )
    assert (
        value(after, "edgespec_verifier_resumed_sessions_total")
        - value(before, "edgespec_verifier_resumed_sessions_total")
        == MAX_SESSIONS
    )
    assert (
        value(after, "edgespec_verifier_resumed_tokens_total") - value(before, "edgespec_verifier_resumed_tokens_total")
        == 2 * MAX_SESSIONS
    )
    assert (
        value(after, "edgespec_verifier_sessions_total", mode="speculative", outcome="closed")
        - value(before, "edgespec_verifier_sessions_total", mode="speculative", outcome="closed")
        == MAX_SESSIONS
    )


def test_pipelined_pre_drafts_and_early_verdicts_are_counted_as_the_client_saw_them(served: Served) -> None:
    before = served.scrape()
    client = EdgeClient(served.address, DraftRuntime(qwen2_layer_skip_draft()))
    config = GenerationConfig(max_new_tokens=3 * NEW_TOKENS, gamma=3, early_verdicts=True)
    stats = client.generate(PROMPT, Mode.SD_EE_PIPELINED, config).stats
    after = served.scrape_once_ended(ended(before) + 1)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("edgespec_verifier_pipelined_blocks_total", result="verified") == stats.pipelined
    # A drop or an early verdict sent as the generation ends may never be read by the client.
    assert grew("edgespec_verifier_pipelined_blocks_total", result="dropped") >= stats.dropped
    # One exit: at most one early verdict a round (the client's hits and misses count guesses of other sources too).
    assert grew("edgespec_verifier_early_verdicts_total", exit_layer="2") <= stats.rounds
    assert grew("edgespec_verifier_rounds_total", mode="speculative") == stats.rounds


def test_a_server_without_metrics_registers_none() -> None:
    service = VerifierService(TargetRuntime(qwen2_target()), None, frozenset())
    assert isinstance(service.metrics, NoMetrics) and not hasattr(service.metrics, "registry")
    service.shutdown()
