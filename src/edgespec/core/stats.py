"""What a generation reports: counts, timings and a timeline of who was busy when."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class TimelineEvent:
    actor: str  # "edge" | "cloud" | "link"
    what: str  # e.g. "draft", "verify", "exit@24", "prefill"
    start_s: float  # relative to the generation's start
    end_s: float
    round: int


@dataclass
class GenerationStats:
    mode: str
    prompt_tokens: int = 0
    new_tokens: int = 0
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    hits: int = 0  # rounds whose streamed early verdict equalled the final verdict
    misses: int = 0  # rounds whose streamed early verdict was wrong
    no_hint: int = 0  # rounds where no exit was confident enough to stream
    target_passes: int = 0
    draft_s: float = 0.0
    verify_s: float = 0.0
    ttft_s: float = 0.0
    total_s: float = 0.0
    finish_reason: str = ""
    # Over the network (zero in process):
    bytes_sent: int = 0
    bytes_received: int = 0
    wait_s: float = 0.0  # edge blocked on the server: block sent -> final verdict received
    server_verify_s: float = 0.0  # the server's own verify compute, as it reported
    server_draft_s: float = 0.0  # cloud-sd: the server's own drafting (also inside server_verify_s: busy time)
    server_queued_s: float = 0.0  # blocks waiting at the server for a pass to start, as it reported
    dropped: int = 0  # pipelined pre-drafts the server dropped (assumption did not hold)
    # Under a grammar: seconds each side spent in its grammar work (masks, advancing, rollback);
    # server_mask_s is known in process only (the wire does not carry it).
    edge_mask_s: float = 0.0
    server_mask_s: float = 0.0
    pipelined: int = 0  # rounds verified straight from a pipelined pre-draft
    # Network failures (zero when nothing failed):
    connection_losses: int = 0  # outages: a session with the server failed (link or server died)
    reconnects: int = 0  # sessions re-opened with the committed tokens after an outage
    fallbacks: int = 0  # times the client gave up on the server and decoded edge-only
    switchbacks: int = 0  # times it went back from edge-only to the requested mode
    # Provisional tokens: decided by the draft alone during outages, then re-verified by the
    # target when it came back: confirmed, or retracted from the first disagreement on.
    provisional_tokens: int = 0
    reverified: int = 0  # provisional tokens the target agreed with (now final)
    retractions: int = 0  # times the target replaced a provisional token (the rest withdrawn)
    retracted_tokens: int = 0
    # Provisional tokens kept because the server never came back within the outage budget: the
    # draft's, NOT the target's output (not lossless).
    fallback_tokens: int = 0
    fallback_spans: list[tuple[int, int]] = field(default_factory=list)  # [start, end) in the new tokens
    # Pre-draft branches (each on one assumed verdict): started, shipped before the verdict
    # (pipelined), and the rounds each source's branch was right ("guess" or "exit N").
    branches: int = 0
    branches_shipped: int = 0
    hits_by_source: dict[str, int] = field(default_factory=dict)
    per_exit: dict[str, dict[str, int]] = field(default_factory=dict)
    gamma_counts: dict[str, int] = field(default_factory=dict)  # rounds per draft length used
    timeline: list[TimelineEvent] = field(default_factory=list)

    @property
    def lossless(self) -> bool:
        """Every token was decided by the target (always False for edge-only by request)."""
        return self.mode != "edge-only" and self.fallback_tokens == 0

    @property
    def tokens_per_round(self) -> float:
        return self.new_tokens / self.rounds if self.rounds else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def idle_s(self) -> float:
        """Edge time not spent drafting."""
        return max(0.0, self.total_s - self.draft_s)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.rounds if self.rounds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.total_s if self.total_s > 0 else 0.0

    def count_gamma(self, gamma: int) -> None:
        self.gamma_counts[str(gamma)] = self.gamma_counts.get(str(gamma), 0) + 1

    def count_exit(self, layer: int, streamed: bool, correct: bool) -> None:
        entry = self.per_exit.setdefault(str(layer), {"rounds": 0, "streamed": 0, "correct": 0, "streamed_correct": 0})
        entry["rounds"] += 1
        entry["streamed"] += int(streamed)
        entry["correct"] += int(correct)
        entry["streamed_correct"] += int(streamed and correct)

    def as_dict(self, with_timeline: bool = True) -> dict[str, Any]:
        data = asdict(self)
        if not with_timeline:
            data.pop("timeline")
        data.update(
            tokens_per_round=self.tokens_per_round,
            acceptance_rate=self.acceptance_rate,
            hit_rate=self.hit_rate,
            idle_s=self.idle_s,
            tokens_per_s=self.tokens_per_s,
            lossless=self.lossless,
        )
        return data
