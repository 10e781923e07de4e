"""From per-generation records to the numbers a benchmark reports, per mode and profile."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from edgespec.link import PROFILES


@dataclass(frozen=True)
class PriceModel:
    """What a generation costs the cloud: GPU seconds while verifying, plus egress bytes."""

    gpu_usd_per_hour: float = 2.50  # one A100-class GPU, on-demand, order of magnitude
    egress_usd_per_gb: float = 0.09

    def usd(self, server_busy_s: float, wire_bytes: float) -> float:
        return server_busy_s * self.gpu_usd_per_hour / 3600 + wire_bytes * self.egress_usd_per_gb / 1e9


def link_round_trips(mode: str, rounds: int) -> int:
    """Round trips on the critical path: one per round when speculating, one in all when the
    server streams (cloud-ar, cloud-sd), none on the edge alone."""
    if mode == "edge-only":
        return 0
    return 1 if mode in ("cloud-ar", "cloud-sd") else rounds


def queued_s(record: dict[str, Any]) -> float:
    """A generation's time waiting at the server for its passes to start. Rounds the edge sends:
    as the server reports it per verdict. A stream the server decodes by itself (cloud-ar, or any
    mode whose tokens arrive as "decode" passes) reports no queue time, but its session submits
    each pass the moment the previous one ends, so the gaps between its consecutive passes (each
    placed by the client at arrival - the server's compute time; the link's delay cancels out)
    are that wait."""
    stats = record["stats"]
    passes = [
        e for e in stats.get("timeline", []) if e["actor"] == "cloud" and e["what"] in ("prefill (server)", "decode")
    ]
    if not any(e["what"] == "decode" for e in passes):
        return float(stats.get("server_queued_s", 0.0))
    return sum(max(0.0, b["start_s"] - a["end_s"]) for a, b in zip(passes, passes[1:]))


# Stats every record carries, summed over the prompts of one mode x profile.
_SUMMED_STATS = (
    "new_tokens",
    "rounds",
    "total_s",
    "draft_s",
    "server_verify_s",
    "bytes_sent",
    "bytes_received",
    "hits",
    "misses",
    "no_hint",
    "target_passes",
    "pipelined",
    "dropped",
    "wait_s",
)


def _stat_totals(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The stats summed over the prompts, from which `summarize` takes its ratios; the branch
    counts default to 0 for records from modes that ship no branches."""
    total = {key: sum(r["stats"][key] for r in records) for key in _SUMMED_STATS}
    for key in ("branches", "branches_shipped"):
        total[key] = sum(r["stats"].get(key, 0) for r in records)
    return total


def _hits_by_source(records: list[dict[str, Any]]) -> dict[str, int]:
    """Hits per hint source summed over the prompts (in the order the sources first appear), so
    the report can say which source earned the hits."""
    by_source: dict[str, int] = {}
    for r in records:
        for source, count in r["stats"].get("hits_by_source", {}).items():
            by_source[source] = by_source.get(source, 0) + count
    return by_source


def summarize(records: Iterable[dict[str, Any]], profile: str, price: PriceModel) -> dict[str, Any]:
    """Sums over the prompts of one mode x profile, then ratios (a mean of ratios would let
    short generations dominate)."""
    records = [r for r in records if "stats" in r]
    if not records:
        return {}
    total = _stat_totals(records)
    by_source = _hits_by_source(records)
    queued = sum(queued_s(r) for r in records)
    tokens = max(1, total["new_tokens"])
    rounds = max(1, total["rounds"])
    rtt_s = PROFILES[profile].rtt_ms / 1000 if profile in PROFILES else 0.0
    wire = total["bytes_sent"] + total["bytes_received"]
    return {
        "prompts": len(records),
        "tokens": total["new_tokens"],
        "tokens_per_s": total["new_tokens"] / total["total_s"] if total["total_s"] else 0.0,
        "ms_per_token": 1000 * total["total_s"] / tokens,
        "ttft_ms": 1000 * sum(r["stats"]["ttft_s"] for r in records) / len(records),
        "tokens_per_round": total["new_tokens"] / rounds,
        "hit_rate": total["hits"] / rounds,
        "miss_rate": total["misses"] / rounds,
        "pipelined_rounds": total["pipelined"],
        "pipelined_share": total["pipelined"] / rounds,
        "branches": total["branches"],
        "branches_shipped": total["branches_shipped"],
        "branches_dropped": total["dropped"],
        "hits_by_source": by_source,
        # Shares of the wall time each side computed (summed over prompts run one after another).
        "edge_busy_share": total["draft_s"] / total["total_s"] if total["total_s"] else 0.0,
        "cloud_busy_share": total["server_verify_s"] / total["total_s"] if total["total_s"] else 0.0,
        "draft_ms_per_token": 1000 * total["draft_s"] / max(1, sum(r["stats"].get("drafted", 0) for r in records)),
        "target_passes_per_token": total["target_passes"] / tokens,
        "server_busy_s_per_token": total["server_verify_s"] / tokens,
        # One verify (a decode for cloud-ar) at the server, exits included: against `sd`'s, what exits cost.
        "verify_ms_per_round": 1000 * total["server_verify_s"] / rounds,
        "bytes_per_token": wire / tokens,
        "usd_per_1k_tokens": 1000 * price.usd(total["server_verify_s"], wire) / tokens,
        # Waiting at the server for a pass to start (batching: a pass already in flight, or
        # other sessions' passes first): see queued_s.
        "queued_ms_per_round": 1000 * queued / rounds,
        # Waiting for verdicts beyond the pass the round rode in (its whole batched forward), the
        # server-reported queueing and the emulated round trips: what gRPC, serialisation, the
        # emulator's queues and the event loops add per round.
        "overhead_ms_per_round": 1000
        * (
            total["wait_s"]
            - total["server_verify_s"]
            - queued
            - sum(link_round_trips(r["mode"], r["stats"]["rounds"]) for r in records) * rtt_s
        )
        / rounds,
        "edge_wait_s_per_token": total["wait_s"] / tokens,
        # Drafting and the network fully hidden: only the verifier's compute remains.
        "physical_limit_tokens_per_s": total["new_tokens"] / total["server_verify_s"]
        if total["server_verify_s"]
        else 0.0,
        "errors": 0,
    }


def first_differences(
    records: list[dict[str, Any]], reference: Callable[[dict[str, Any]], Sequence[int] | None], skip: Iterable[str] = ()
) -> dict[tuple[str, str], list[tuple[str, int]]]:
    """(profile, mode) -> [(prompt id, index of the first token that differs)] for every record
    whose output differs from ``reference(record)`` (records without a reference are skipped)."""
    from edgespec.bench.oracle import first_difference

    skipped = set(skip)
    differences: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for r in records:
        if r["mode"] in skipped or "tokens" not in r:
            continue
        key = (r["profile"], r["mode"])
        differences.setdefault(key, [])
        expected = reference(r)
        position = None if expected is None else first_difference(expected, r["tokens"])
        if position is not None:
            differences[key].append((r["prompt_id"], position))
    return differences


def differences_from_cloud_ar(records: list[dict[str, Any]]) -> dict[tuple[str, str], list[tuple[str, int]]]:
    """Self-consistency: each lossless mode's greedy output against the same server's own
    `cloud-ar` on the same prompt. Not the oracle: in bf16 the two can part at a near-tie (a
    verify and a decode round differently)."""
    baseline = {(r["profile"], r["prompt_id"]): r.get("tokens") for r in records if r["mode"] == "cloud-ar"}
    return first_differences(
        records, lambda r: baseline.get((r["profile"], r["prompt_id"])), skip=("cloud-ar", "edge-only")
    )
