"""edge-serve's Prometheus metrics: what it answered, what it refused and why, what it generated.

Each app has a registry of its own (tests run several apps in one process). Names follow
Prometheus' conventions: ``edgespec_edge_`` prefix, base units in the name (``_seconds``),
``_total`` on counters. Labels are bounded sets: the endpoint is one of the API's paths (anything
else is ``other``), the outcome one of four words, the reason an error code.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from edgespec.core.stats import GenerationStats
from edgespec.openai_api.errors import OpenAIError

ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/ready", "/metrics"})
# Seconds: from a refusal's milliseconds to a long generation's minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TOKENS_PER_ROUND_BUCKETS = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0, 12.0, 16.0)
RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
CLIENT_CLOSED_REQUEST = 499


def outcome_of(status: int) -> str:
    """One word for a response status: ok, refused (the request's fault), cancelled, failed."""
    if status == CLIENT_CLOSED_REQUEST:
        return "cancelled"
    if status < 400:
        return "ok"
    return "refused" if status < 500 else "failed"


class EdgeMetrics:
    def __init__(self, slots_total: int, slots_free: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "edgespec_edge_requests",
            "HTTP requests answered, by endpoint, outcome and status",
            ["endpoint", "outcome", "status"],
            registry=r,
        )
        self.refusals = Counter(
            "edgespec_edge_refusals",
            "Requests refused with an error, by reason (the error code)",
            ["reason"],
            registry=r,
        )
        self.generations = Counter(
            "edgespec_edge_generations", "Generations ended, by finish reason", ["finish_reason"], registry=r
        )
        self.prompt_tokens = Counter(
            "edgespec_edge_prompt_tokens", "Prompt tokens of the generations started", registry=r
        )
        self.generated_tokens = Counter("edgespec_edge_generated_tokens", "Completion tokens generated", registry=r)
        self.rounds = Counter("edgespec_edge_rounds", "Draft/verify rounds run with the cloud verifier", registry=r)
        self.latency = Histogram(
            "edgespec_edge_request_duration_seconds",
            "Time from a completion request's arrival to its last byte",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "edgespec_edge_time_to_first_token_seconds",
            "Time from a completion request's arrival to its first text",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens_per_round = Histogram(
            "edgespec_edge_tokens_per_round",
            "Tokens committed per round, one sample per generation",
            buckets=TOKENS_PER_ROUND_BUCKETS,
            registry=r,
        )
        self.acceptance = Histogram(
            "edgespec_edge_draft_acceptance_ratio",
            "Share of drafted tokens the target accepted, one sample per generation",
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.slots = Gauge("edgespec_edge_slots", "Generation slots (--max-concurrent)", registry=r)
        self.slots.set(slots_total)
        self.slots_in_use = Gauge("edgespec_edge_slots_in_use", "Generation slots held by a request", registry=r)
        self.slots_in_use.set_function(lambda: slots_total - slots_free())

    # ------------------------------------------------------------------ what the app reports

    def refused(self, error: OpenAIError) -> None:
        self.refusals.labels(reason=error.code or error.type).inc()

    def started(self, prompt_tokens: int) -> None:
        self.prompt_tokens.inc(prompt_tokens)

    def first_text(self, endpoint: str, seconds: float) -> None:
        self.time_to_first_token.labels(endpoint=endpoint).observe(seconds)

    def finished(
        self, endpoint: str, arrived: float, finish_reason: str, completion_tokens: int, stats: GenerationStats
    ) -> None:
        self.latency.labels(endpoint=endpoint).observe(time.monotonic() - arrived)
        self.generations.labels(finish_reason=finish_reason).inc()
        self.generated_tokens.inc(completion_tokens)
        if stats.rounds:
            self.rounds.inc(stats.rounds)
            self.tokens_per_round.observe(stats.tokens_per_round)
            if stats.drafted:  # cloud-ar drafts nothing: no acceptance to report
                self.acceptance.observe(stats.acceptance_rate)

    def ended_early(self, reason: str) -> None:
        """A generation that ended without finishing: ``error`` or ``cancelled``."""
        self.generations.labels(finish_reason=reason).inc()

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class CountResponses:
    """ASGI middleware: every HTTP response counted by endpoint, outcome and status."""

    def __init__(self, app: Callable[..., Awaitable[None]], metrics: EdgeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"

        async def counting_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                self.metrics.requests.labels(endpoint=endpoint, outcome=outcome_of(status), status=str(status)).inc()
            await send(message)

        await self.app(scope, receive, counting_send)
