"""edge-serve's operator endpoints against a real verifier: /health says the process is alive,
/ready is 200 only when a request would start now (models loaded, cloud reachable, a slot free),
/metrics counts answers, refusals, tokens and latencies in Prometheus' text format."""

from __future__ import annotations

import re
import socket
import time
import urllib.error
import urllib.request
from typing import Iterator

import pytest

from tests.openai_api.test_openai_api import TARGET_NAME, EdgeServe, Verifier, edge_backend, raw

SLOTS = 2


@pytest.fixture(scope="module")
def edge(verifier: Verifier) -> Iterator[EdgeServe]:
    serve = EdgeServe(edge_backend(verifier.address, slots=SLOTS))
    yield serve
    serve.stop()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def sample(metrics: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus' text format (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in metrics.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        if match and match.group(1) == name and ",".join(sorted((match.group(2) or "").split(","))) == wanted:
            return float(match.group(3))
    return 0.0


def test_ready_when_models_cloud_and_a_slot_are_there(edge: EdgeServe) -> None:
    status, body = get(f"{edge.url}/ready")
    assert status == 200 and '"status":"ready"' in body.replace(" ", "")
    assert raw(f"{edge.url}/health", api_key=None)[0] == 200


def test_not_ready_while_every_slot_is_busy_and_ready_again_after(verifier: Verifier, edge: EdgeServe) -> None:
    verifier.delay_s = 0.05
    try:
        streams = [
            edge.client().chat.completions.create(
                model=TARGET_NAME,
                messages=[{"role": "user", "content": f"Tell me story {i}."}],
                max_tokens=60,
                temperature=0,
                stream=True,
            )
            for i in range(SLOTS)
        ]
        for stream in streams:
            next(iter(stream))
        status, body = raw(f"{edge.url}/ready", api_key=None)
        assert status == 503 and set(body) == {"error"}
        assert body["error"]["code"] == "not_ready" and f"all {SLOTS} slots are busy" in body["error"]["message"]
        assert raw(f"{edge.url}/health", api_key=None)[0] == 200  # alive all the same
        for stream in streams:
            stream.close()
    finally:
        verifier.delay_s = 0.0
    deadline = time.monotonic() + 5.0
    while raw(f"{edge.url}/ready", api_key=None)[0] != 200:
        assert time.monotonic() < deadline, "a slot never came back"
        time.sleep(0.05)


def test_not_ready_without_a_reachable_cloud() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    serve = EdgeServe(edge_backend(dead, slots=1))
    try:
        status, body = raw(f"{serve.url}/ready", api_key=None)
        assert status == 503 and body["error"]["code"] == "not_ready" and "unreachable" in body["error"]["message"]
        assert raw(f"{serve.url}/health", api_key=None)[1]["cloud"] == "unreachable"
    finally:
        serve.stop()


def test_metrics_count_answers_refusals_tokens_and_latency(edge: EdgeServe) -> None:
    before = get(f"{edge.url}/metrics")[1]
    reply = edge.client().chat.completions.create(
        model=TARGET_NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0
    )
    streamed = edge.client().completions.create(
        model=TARGET_NAME, prompt="Once upon", max_tokens=6, temperature=0, stream=True
    )
    streamed_text = "".join(chunk.choices[0].text for chunk in streamed if chunk.choices)
    refused = raw(
        f"{edge.url}/v1/chat/completions",
        {"model": TARGET_NAME, "messages": [{"role": "user", "content": "x " * 5000}]},
    )
    assert refused[0] == 400 and streamed_text is not None
    status, after = get(f"{edge.url}/metrics")
    assert status == 200

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    chat = "/v1/chat/completions"
    assert grew("edgespec_edge_requests_total", endpoint=chat, outcome="ok", status="200") == 1
    assert grew("edgespec_edge_requests_total", endpoint="/v1/completions", outcome="ok", status="200") == 1
    assert grew("edgespec_edge_requests_total", endpoint=chat, outcome="refused", status="400") == 1
    assert grew("edgespec_edge_refusals_total", reason="context_length_exceeded") == 1
    assert grew("edgespec_edge_generated_tokens_total") >= reply.usage.completion_tokens + 1
    assert grew("edgespec_edge_request_duration_seconds_count", endpoint=chat) == 1
    assert grew("edgespec_edge_time_to_first_token_seconds_count", endpoint="/v1/completions") == 1
    assert grew("edgespec_edge_tokens_per_round_count") == 2 and grew("edgespec_edge_draft_acceptance_ratio_count") == 2
    assert sample(after, "edgespec_edge_slots") == SLOTS and sample(after, "edgespec_edge_slots_in_use") == 0
    assert "# TYPE edgespec_edge_request_duration_seconds histogram" in after


def test_probes_need_no_api_key_and_the_api_still_does(edge: EdgeServe) -> None:
    for path in ("/health", "/ready", "/metrics"):
        assert get(f"{edge.url}{path}")[0] == 200, path
    status, body = raw(f"{edge.url}/v1/models", api_key=None)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
