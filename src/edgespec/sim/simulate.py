"""`edgespec simulate`: the round core on a discrete-event clock, tokens from recorded traces,
time from a hardware profile; the same summary and report as `edgespec bench`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from edgespec.bench.metrics import PriceModel, summarize
from edgespec.capacity import point_metrics
from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.drivers.cost_profile import HardwareProfile
from edgespec.drivers.trace import Trace
from edgespec.drivers.trace_backends import ExitOracle, TraceCloud, TraceEdge
from edgespec.drivers.virtual_clock import ClientSpec, VirtualClock
from edgespec.drivers.virtual_devices import Link
from edgespec.link import PROFILES
from edgespec.link.profiles import LinkProfile

# cloud-sd also needs the profile's server-side draft cost (`edgespec simulate` adds it when known).
SIMULATED_MODES = ("cloud-ar", "sd", "sd-ee", "sd-ee-predraft", "sd-ee-pipelined")


@dataclass(frozen=True)
class SimConfig:
    modes: tuple[str, ...] = SIMULATED_MODES
    max_new_tokens: int = 64
    gamma: int = 4
    adaptive_gamma: bool = False
    max_gamma: int = 8
    branches: int = 2
    guess_verdict: bool = True
    runner_up: bool = GenerationConfig.runner_up
    draft_stop: float = GenerationConfig.draft_stop
    early_verdicts: str = "auto"
    clients: int = 1
    max_batch: int = 32
    exit_oracle: ExitOracle | None = None  # a hypothetical exit instead of the traces' own
    exit_candidates: bool = True  # the traces' exits score only the draft's candidate ids, as `serve` does

    def generation(self, eos_ids: frozenset[int]) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            gamma=self.gamma,
            eos_ids=eos_ids,
            adaptive_gamma=self.adaptive_gamma,
            max_gamma=self.max_gamma,
            branches=self.branches,
            guess_verdict=self.guess_verdict,
            runner_up=self.runner_up,
            draft_stop=self.draft_stop,
            early_verdicts=GenerationConfig.early_verdicts_from(self.early_verdicts),
        )


def link_for(link: LinkProfile, profile: HardwareProfile) -> Link:
    """The emulated link (its mean delay: jitter averages out over a run), plus the protocol's
    own handling per message; a new channel is ready after one one-way delay (measured through
    the emulator: the client's connection to the local proxy is immediate, the proxy's upstream
    handshake is not waited for)."""
    bandwidth = link.bytes_per_second if link.bytes_per_second else float("inf")
    return Link(
        one_way_s=(link.one_way_delay_ms + profile.message_overhead_ms) / 1000,
        bandwidth_bytes_per_s=bandwidth,
        connect_rtts=0.5,
    )


def _eos(trace: Trace) -> frozenset[int]:
    return frozenset({trace.continuation[-1]}) if trace.ended_in_eos else frozenset()


def run_mode(
    traces: Sequence[Trace], mode: Mode, profile: HardwareProfile, link: Link, config: SimConfig
) -> list[dict[str, Any]]:
    """One record per generation, in `edgespec bench`'s shape. With several clients they start
    together, each on its own trace, against one batching verifier."""
    records = []
    groups = [list(traces)] if config.clients > 1 else [[t] for t in traces]
    for group in groups:
        chosen = [group[i % len(group)] for i in range(config.clients)] if config.clients > 1 else group
        cloud = TraceCloud(dict(enumerate(chosen)), profile, config.exit_oracle, config.exit_candidates)
        specs = [
            ClientSpec(
                t.prompt_ids,
                mode,
                config.generation(_eos(t)),
                TraceEdge(t, profile, config.draft_stop) if mode.uses_draft else None,
                link,
                eos_ids=_eos(t),
            )
            for t in chosen
        ]
        world = VirtualClock(cloud, config.max_batch)
        for index, (trace, result) in enumerate(zip(chosen, world.run(specs))):
            records.append(
                {
                    "world": len(records) - index,  # the records of one world (one verifier) share this
                    "prompt_set": trace.prompt_set,
                    "prompt_id": trace.id,
                    "mode": mode.value,
                    "client_index": index,
                    "tokens": result.tokens,
                    "stats": result.stats.as_dict(with_timeline=False),
                    "started_at": 0.0,
                    "ended_at": result.stats.total_s,
                    "verifier_busy_s": world.verifier.busy_s,
                    "wall_s": world.wall_s,
                }
            )
    return records


def summarize_modes(
    records: list[dict[str, Any]], link_name: str, modes: Sequence[str], clients: int, price: PriceModel
) -> dict[str, Any]:
    per_mode: dict[str, Any] = {}
    for mode in modes:
        chosen = [r for r in records if r["mode"] == mode]
        summary = summarize(chosen, link_name, price)
        if clients > 1 and chosen:
            # The serving figures, computed as `edgespec bench` computes them (edgespec.capacity).
            summary.update(point_metrics(*_on_one_clock(chosen, clients)), clients=clients)
        per_mode[mode] = summary
    rate = "aggregate_tokens_per_s" if clients > 1 else "tokens_per_s"
    baseline = per_mode.get("cloud-ar", {}).get(rate) or 0.0
    for summary in per_mode.values():
        summary["speedup_vs_cloud_ar"] = summary.get(rate, 0.0) / baseline if baseline else 0.0
    return per_mode


def simulate(
    traces: Sequence[Trace],
    profile: HardwareProfile,
    links: Sequence[str],
    config: SimConfig,
    price: PriceModel = PriceModel(),
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    profiles: dict[str, Any] = {}
    for name in links:
        link = link_for(PROFILES[name], profile)
        chosen = []
        for mode in config.modes:
            chosen += run_mode(traces, Mode.parse(mode), profile, link, config)
        for record in chosen:
            record["profile"] = name
        profiles[name] = summarize_modes(
            chosen, name, [Mode.parse(m).value for m in config.modes], config.clients, price
        )
        records += chosen
    return {"profiles": profiles}, records


def speedup_grid(
    traces: Sequence[Trace],
    profile: HardwareProfile,
    modes: Sequence[str],
    rtts_ms: Sequence[float],
    decode_ms: Sequence[float],
    config: SimConfig,
) -> dict[str, list[list[float]]]:
    """Per mode, tokens/s against cloud-ar's over (target decode time) x (round-trip time)."""
    grid: dict[str, list[list[float]]] = {m: [] for m in modes if m != "cloud-ar"}
    for decode in decode_ms:
        scaled = profile.scaled(decode)
        rows: dict[str, list[float]] = {m: [] for m in grid}
        for rtt in rtts_ms:
            link = Link(one_way_s=(rtt / 2 + scaled.message_overhead_ms) / 1000, connect_rtts=0.5)
            rate = {}
            for mode in ["cloud-ar", *grid]:
                chosen = run_mode(traces, Mode.parse(mode), scaled, link, config)
                rate[mode] = sum(len(r["tokens"]) for r in chosen) / sum(r["stats"]["total_s"] for r in chosen)
            for mode in grid:
                rows[mode].append(rate[mode] / rate["cloud-ar"])
        for mode in grid:
            grid[mode].append(rows[mode])
    return grid


def clients_sweep(
    traces: Sequence[Trace],
    profile: HardwareProfile,
    link: Link,
    link_name: str,
    modes: Sequence[str],
    counts: Sequence[int],
    config: SimConfig,
    price: PriceModel = PriceModel(),
) -> dict[int, dict[str, Any]]:
    """clients -> mode -> the serving figures of that point (`edgespec.capacity.point_metrics`,
    the verifier's busy time exact) beside `summarize`'s: the same figures `edgespec bench`
    measures, so the capacity rule is one."""
    points: dict[int, dict[str, Any]] = {}
    for count in counts:
        point = SimConfig(**{**config.__dict__, "clients": count})
        points[count] = {}
        for mode in modes:
            name = Mode.parse(mode).value
            records = run_mode(traces, Mode.parse(mode), profile, link, point)
            figures = point_metrics(*_on_one_clock(records, count))
            points[count][name] = {
                **summarize([dict(r, profile=link_name) for r in records], link_name, price),
                **figures,
            }
    return points


def _on_one_clock(records: list[dict[str, Any]], clients: int) -> tuple[list[dict[str, Any]], float]:
    """The records of one point on one clock, and the verifier's busy seconds. With several
    clients they shared one world that started at 0. Alone, each trace ran in a world of its
    own: they are laid end to end (for the aggregate figures) and each counts as one client
    alone (its per-client rate is one sample of a client with the verifier to itself)."""
    if clients > 1:
        return records, records[0]["verifier_busy_s"] if records else 0.0
    laid, start, busy = [], 0.0, 0.0
    for index, record in enumerate(records):
        laid.append(dict(record, started_at=start, ended_at=start + record["stats"]["total_s"], client_index=index))
        start += record["stats"]["total_s"]
        busy += record["verifier_busy_s"]
    return laid, busy


EDGE_SD_MODES = ("sd", "sd-ee", "sd-ee-predraft", "sd-ee-pipelined")


def colocated_comparison(
    sweep: dict[int, dict[str, Any]], profile: HardwareProfile, link_name: str, modes: Sequence[str], config: SimConfig
) -> dict[str, Any]:
    """Edge speculation against co-located speculation (cloud-sd) on one verifier, per client
    count of ``sweep`` (``clients_sweep``'s points on ``link_name``): median per-client tokens/s
    and the verifier's seconds per generated token (its busy time, a batched pass counted once,
    over every client's tokens), with the factor arXiv 2606.25091 predicts, 1 + γ·t_d/t_v (t_d:
    the server's draft step, t_v: one verify of γ drafts). γ is the configured one (with
    --adaptive-gamma the rounds' γ varies)."""
    if profile.server_draft_ms_per_token is None or "cloud-sd" not in modes:
        return {}
    gamma = config.gamma
    t_d = profile.server_draft_ms_per_token
    t_v = profile.forward_s(gamma + 1) * 1000
    chosen = [m for m in ("cloud-ar", *EDGE_SD_MODES, "cloud-sd") if m in modes]
    counts = sorted(sweep)
    points: dict[str, Any] = {}
    for count in counts:
        per_mode = {
            mode: {
                "median_per_client_tokens_per_s": sweep[count][mode]["per_client_tokens_per_s_median"],
                "verifier_s_per_token": sweep[count][mode]["server_s_per_token"],
            }
            for mode in chosen
        }
        colocated = per_mode["cloud-sd"]["verifier_s_per_token"]
        for row in per_mode.values():
            # > 1: that many times fewer verifier seconds per token than cloud-sd
            row["verifier_factor_vs_cloud_sd"] = (
                colocated / row["verifier_s_per_token"] if row["verifier_s_per_token"] else 0.0
            )
        points[str(count)] = per_mode
    return {
        "link": link_name,
        "gamma": gamma,
        "t_draft_ms": t_d,
        "t_verify_ms": t_v,
        "predicted_factor": 1 + gamma * t_d / t_v,
        "t_draft_source": profile.server_draft_source,
        "clients": list(counts),
        "points": points,
    }


def render_colocated(comparison: dict[str, Any]) -> str:
    if not comparison:
        return ""
    counts = comparison["clients"]
    lines = [
        "",
        f"## Edge speculation vs co-located speculation (cloud-sd), {comparison['link']}",
        "",
        "Predicted (arXiv 2606.25091): edge SD needs 1 + γ·t_d/t_v = "
        f"1 + {comparison['gamma']}·{comparison['t_draft_ms']:.1f}/{comparison['t_verify_ms']:.1f} "
        f"= **{comparison['predicted_factor']:.2f}×** fewer verifier seconds per token than cloud-sd "
        f"(t_d: {comparison['t_draft_source'] or 'the profile'}; t_v: a verify of γ drafts, the profile's). "
        "Simulated below: verifier seconds per token (its busy time, a batched pass counted once) "
        "and cloud-sd's ÷ each mode's.",
        "",
        "| mode | "
        + " | ".join(f"{c} clients: tok/s per client · verifier ms/tok · cloud-sd ÷" for c in counts)
        + " |",
        "|---|" + "---|" * len(counts),
    ]
    for mode in comparison["points"][str(counts[0])]:
        cells = []
        for c in counts:
            row = comparison["points"][str(c)][mode]
            cells.append(
                f"{row['median_per_client_tokens_per_s']:.1f} · {1000 * row['verifier_s_per_token']:.2f} · "
                f"{row['verifier_factor_vs_cloud_sd']:.2f}×"
            )
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
