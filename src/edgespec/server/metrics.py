"""serve's Prometheus metrics: the sessions it served and how they ended, what it refused and why,
the tokens and rounds it decided, and what its passes cost.

The handlers and the pass thread report at points they already pass (a session's end, a final
verdict, a pass recorded in ``pass_stats``); every update is a prometheus-client counter or
histogram, whose own lock is the only synchronisation added. Gauges that describe the present
(sessions open, KV bytes held, queue depth) are read when scraped, not kept up to date.

Each server has a registry of its own (tests run several in one process). Names follow
Prometheus' conventions, as edge-serve's do (``openai_api/metrics.py``): ``edgespec_verifier_``
prefix, base units in the name (``_seconds``, ``_bytes``), ``_total`` on counters. Labels are
bounded sets: a mode is one of the three session kinds, an outcome one of seven words, a reason
one of the protocol's error codes. The acceptance rate is a ratio of two counters
(``accepted_tokens_total`` / ``drafted_tokens_total``), so a dashboard picks its window.

``NoMetrics`` answers every report with nothing: a server started without ``--metrics-port``
pays for no metric at all.
"""

from __future__ import annotations

import logging
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from edgespec.server.pass_stats import PassStats

logger = logging.getLogger(__name__)

# The session kinds as labels; the server cannot tell sd from its pre-drafting variants.
MODES = {1: "cloud_ar", 2: "speculative", 3: "cloud_sd"}
# How a session ended. refused: at its open; finished: EOS or its token budget; closed: the client
# closed it before that; expired: idle or past its lifetime; error: a request the protocol refuses
# mid-session; failed: a bug on the server; cancelled: the stream went away (client gone, server stopping).
OUTCOMES = ("refused", "finished", "closed", "expired", "error", "failed", "cancelled")
# Few buckets each: a scrape's cost grows with the samples it writes (every bucket is one).
ACCEPTED_BUCKETS = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0)
BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
# Seconds: an accelerator's pass to a long prompt's prefill on a CPU.
PASS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


def mode_label(kind: int) -> str:
    return MODES.get(kind, "unknown")


class VerifierMetrics:
    """The verifier's metrics and the reports that update them (see the module docstring)."""

    def __init__(self) -> None:
        """Declare every metric in one registry of its own.

        Long because it declares each metric of the verifier, one statement each, with its help text."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sessions = Counter(
            "edgespec_verifier_sessions", "Sessions ended, by mode and outcome", ["mode", "outcome"], registry=r
        )
        self.refusals = Counter(
            "edgespec_verifier_refusals",
            "Requests refused with a protocol error (at open or mid-session), by reason (the error code)",
            ["reason"],
            registry=r,
        )
        self.resumed_sessions = Counter(
            "edgespec_verifier_resumed_sessions",
            "Sessions opened with committed tokens: a client re-opening after an outage or a refusal",
            registry=r,
        )
        self.resumed_tokens = Counter(
            "edgespec_verifier_resumed_tokens",
            "Committed tokens resumed sessions brought back (prefilled again, not generated again)",
            registry=r,
        )
        self.tokens = Counter(
            "edgespec_verifier_committed_tokens", "Tokens the target committed, by mode", ["mode"], registry=r
        )
        self.rounds = Counter(
            "edgespec_verifier_rounds", "Draft blocks verified (final verdicts), by mode", ["mode"], registry=r
        )
        self.drafted = Counter(
            "edgespec_verifier_drafted_tokens", "Draft tokens in the verified blocks, by mode", ["mode"], registry=r
        )
        self.accepted = Counter(
            "edgespec_verifier_accepted_tokens", "Draft tokens the target accepted, by mode", ["mode"], registry=r
        )
        self.accepted_per_round = Histogram(
            "edgespec_verifier_accepted_tokens_per_round",
            "Draft tokens accepted in one round (a round commits these plus one)",
            buckets=ACCEPTED_BUCKETS,
            registry=r,
        )
        self.pipelined = Counter(
            "edgespec_verifier_pipelined_blocks",
            "Pipelined pre-drafts (blocks tagged with the verdict they assume), by result: verified "
            "(the assumption held: a hit) or dropped (a miss)",
            ["result"],
            registry=r,
        )
        self.early_verdicts = Counter(
            "edgespec_verifier_early_verdicts",
            "Early verdicts streamed to clients, by exit layer",
            ["exit_layer"],
            registry=r,
        )
        self.pass_rows = Histogram(
            "edgespec_verifier_pass_batch_size",
            "Sessions (rows) in one batched target pass",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.pass_seconds = Histogram(
            "edgespec_verifier_pass_duration_seconds",
            "Time of one batched target pass (the forward itself)",
            buckets=PASS_BUCKETS,
            registry=r,
        )
        self.pass_tokens = Counter(
            "edgespec_verifier_pass_tokens",
            "Tokens fed to the target, by kind: fed (real), padded (paid for: rows x the longest row)",
            ["kind"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "edgespec_verifier_queue_wait_seconds",
            "Time a job (prefill, verify, decode, draft) waited for its first pass",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.sessions_open = Gauge("edgespec_verifier_sessions_open", "Sessions open now", registry=r)
        self.session_limit = Gauge(
            "edgespec_verifier_session_limit", "Open sessions admitted (--max-sessions); one more is BUSY", registry=r
        )
        self.jobs_queued = Gauge("edgespec_verifier_jobs_queued", "Jobs waiting for the target now", registry=r)
        self.kv_bytes = Gauge(
            "edgespec_verifier_kv_cache_bytes", "KV cache the open sessions' committed tokens hold", registry=r
        )
        self._by_mode: dict[int, tuple[Counter, Counter, Counter, Counter]] = {}

    def watch(
        self,
        session_limit: int,
        sessions_open: Callable[[], int],
        jobs_queued: Callable[[], int],
        kv_bytes: Callable[[], int],
    ) -> None:
        """Read the present state from the service when scraped."""
        self.session_limit.set(session_limit)
        self.sessions_open.set_function(sessions_open)
        self.jobs_queued.set_function(jobs_queued)
        self.kv_bytes.set_function(kv_bytes)

    # ------------------------------------------------------------------ what the server reports

    def session_ended(self, kind: int, outcome: str) -> None:
        self.sessions.labels(mode=mode_label(kind), outcome=outcome).inc()

    def refused(self, reason: str) -> None:
        self.refusals.labels(reason=reason).inc()

    def resumed(self, committed_tokens: int) -> None:
        self.resumed_sessions.inc()
        self.resumed_tokens.inc(committed_tokens)

    def round_verified(self, kind: int, drafted: int, accepted: int, committed: int, pipelined: bool) -> None:
        """A final verdict (speculative or cloud-sd): the block's size, what it accepted, what it committed."""
        rounds, tokens, drafted_tokens, accepted_tokens = self._round_counters(kind)
        rounds.inc()
        tokens.inc(committed)
        drafted_tokens.inc(drafted)
        accepted_tokens.inc(accepted)
        self.accepted_per_round.observe(accepted)
        if pipelined:
            self.pipelined.labels(result="verified").inc()

    def _round_counters(self, kind: int) -> tuple[Counter, Counter, Counter, Counter]:
        """A mode's round counters, looked up by label once (every round reports to them)."""
        counters = self._by_mode.get(kind)
        if counters is None:
            mode = mode_label(kind)
            counters = tuple(c.labels(mode=mode) for c in (self.rounds, self.tokens, self.drafted, self.accepted))
            self._by_mode[kind] = counters  # type: ignore[assignment]
        return counters  # type: ignore[return-value]

    def block_dropped(self) -> None:
        self.pipelined.labels(result="dropped").inc()

    def early_verdict(self, layer: int) -> None:
        self.early_verdicts.labels(exit_layer=str(layer)).inc()

    def token_decoded(self, committed: int) -> None:
        """cloud-ar: one decode's token (0 past EOS or the budget)."""
        self.tokens.labels(mode="cloud_ar").inc(committed)

    # ------------------------------------------------------------------ from the pass thread

    def pass_ran(self, stats: PassStats) -> None:
        self.pass_rows.observe(stats.rows)
        self.pass_seconds.observe(stats.forward_ms / 1000)
        self.pass_tokens.labels(kind="fed").inc(stats.fed_tokens)
        self.pass_tokens.labels(kind="padded").inc(stats.padded_tokens)

    def job_waited(self, seconds: float) -> None:
        self.queue_wait.observe(seconds)

    # ------------------------------------------------------------------ exposition

    def serve_http(self, host: str, port: int) -> int:
        """Serve /metrics (Prometheus' text format) on ``host:port`` from a daemon thread; the
        port bound (``port`` 0: any free one)."""
        httpd, _thread = start_http_server(port, addr=host, registry=self.registry)
        bound = int(httpd.server_address[1])
        logger.info("metrics on http://%s:%d/metrics", host, bound)
        return bound


class NoMetrics(VerifierMetrics):
    """Every report does nothing and nothing is registered: metrics off."""

    def __init__(self) -> None:  # noqa: D107 - deliberately registers nothing
        pass

    def watch(self, *args: object, **kwargs: object) -> None:
        pass

    def session_ended(self, kind: int, outcome: str) -> None:
        pass

    def refused(self, reason: str) -> None:
        pass

    def resumed(self, committed_tokens: int) -> None:
        pass

    def round_verified(self, kind: int, drafted: int, accepted: int, committed: int, pipelined: bool) -> None:
        pass

    def block_dropped(self) -> None:
        pass

    def early_verdict(self, layer: int) -> None:
        pass

    def token_decoded(self, committed: int) -> None:
        pass

    def pass_ran(self, stats: PassStats) -> None:
        pass

    def job_waited(self, seconds: float) -> None:
        pass

    def serve_http(self, host: str, port: int) -> int:
        raise RuntimeError("metrics are off: build the service with VerifierMetrics() to serve them")
