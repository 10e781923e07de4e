"""`edgespec simulate`: replay traces through the round core on a simulated clock, write the
summary, report and plots."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from edgespec.bench.metrics import PriceModel
from edgespec.cli.options import add_round_policy_arguments
from edgespec.cli.simulate_report import capacity_ratio_sentence, compare_with_bench, render_comparison
from edgespec.cli.simulate_window import WINDOW_MODES, add_window_arguments, edge_specs, resolve_edge, run_window
from edgespec.cli.trace import split_list
from edgespec.core.modes import Mode
from edgespec.models.presets import DEFAULT_DRAFT, DEFAULT_TARGET

HEATMAP_RTTS_MS = (0, 10, 25, 50, 100, 200)
HEATMAP_DECODE_MS = (5, 10, 20, 40, 80, 160, 320)

DEFAULT_MODES = "cloud-ar,sd,sd-ee,sd-ee-predraft,sd-ee-pipelined,cloud-sd"


def add_simulate_parser(subparsers: Any) -> None:
    sim = subparsers.add_parser(
        "simulate",
        help="replay traces through the round core on a simulated clock",
        description="Replay recorded traces (edgespec trace) through the round core on a simulated clock, with the "
        "costs of a hardware profile (this host probed, the H200, or a JSON file) and emulated links; writes summary, "
        "report and plots.",
    )
    sim.add_argument("--traces", default="out/traces")
    sim.add_argument(
        "--hardware",
        default="host",
        help="host (probed here, cached) | h200 (measured costs) | FILE.json (a hardware profile, or an engine's "
        "costs from `edgespec profile engine --out`, with --edge's draft)",
    )
    sim.add_argument("--target", default=DEFAULT_TARGET, help="for --hardware host: the model to probe")
    sim.add_argument("--draft", default=DEFAULT_DRAFT)
    sim.add_argument("--draft-backend", default="llamacpp", choices=["llamacpp", "transformers"])
    sim.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    sim.add_argument(
        "--refresh-probe",
        action="store_true",
        help="probe this host again instead of using the cached profile",
    )
    sim.add_argument("--profiles", default="wan", help="comma-separated: lan, wan, cellular")
    sim.add_argument(
        "--modes",
        default=DEFAULT_MODES,
        help="cloud-sd needs the profile's server-side draft cost (dropped from the default when unknown)",
    )
    sim.add_argument("--clients", default="1", help="N, or a sweep N1,N2,... (clients sharing one batching verifier)")
    sim.add_argument("--gamma", type=int, default=4)
    sim.add_argument("--adaptive-gamma", action="store_true")
    sim.add_argument("--max-gamma", type=int, default=8)
    add_round_policy_arguments(sim)
    sim.add_argument(
        "--exit-vocab",
        choices=("candidates", "full"),
        default="candidates",
        help="what the traces' exits score, as `serve --exit-vocab`: the draft's top-8 ids per token (default) or the "
        "whole vocabulary",
    )
    sim.add_argument(
        "--exit-oracle",
        default=None,
        metavar="LAYER[:ACCURACY]",
        help="design question: replace the traces' exits by one at LAYER that costs nothing and streams the true "
        "verdict with probability ACCURACY (default 1); use with --early-verdicts on",
    )
    sim.add_argument("--max-new-tokens", type=int, default=64)
    sim.add_argument("--max-batch", type=int, default=32)
    sim.add_argument(
        "--slo-tokens-per-s",
        type=float,
        default=None,
        help="a --clients sweep's SLO: per-client tokens/s (p10) each client must keep (default: half of "
        "single-client cloud-ar in the sweep)",
    )
    sim.add_argument("--no-plots", action="store_true")
    sim.add_argument(
        "--compare-bench",
        metavar="SUMMARY.json",
        help="a measured `edgespec bench` summary of the same prompts: report simulated vs measured tokens/s per mode",
    )
    sim.add_argument("--out", default="out/simulate")
    add_window_arguments(sim)
    sim.set_defaults(handler=run_simulate)


def resolve_hardware(args: argparse.Namespace) -> Any:
    from edgespec.drivers.cost_profile import HardwareProfile, h200_profile
    from edgespec.sim.probe import cache_path, host_profile

    if args.hardware == "host":
        return host_profile(args.target, args.draft, args.draft_backend, _dtype(args.dtype), refresh=args.refresh_probe)
    if args.hardware == "h200":
        edge = cache_path(args.target, args.draft, args.draft_backend, _dtype(args.dtype))
        return h200_profile(HardwareProfile.load(edge) if edge.is_file() else None)
    from edgespec.sim.engine_profile import is_engine_costs, load_verifier

    if args.edge is not None or is_engine_costs(json.loads(Path(args.hardware).read_text())):
        return load_verifier(args.hardware, resolve_edge(edge_specs(args)[0], args))
    return HardwareProfile.load(args.hardware)


def _dtype(dtype: str) -> str:
    from edgespec.models.loading import resolve_dtype

    return resolve_dtype(dtype)


def _client_counts(args: argparse.Namespace, traces: list[Any]) -> list[int]:
    """--clients as sorted counts, once the traces and the SLO options are known to fit them."""
    too_short = [t.id for t in traces if not t.ended_in_eos and len(t.continuation) < args.max_new_tokens]
    if too_short:
        raise ValueError(
            f"traces {too_short} hold fewer than --max-new-tokens {args.max_new_tokens} tokens: trace with a larger "
            "--max-new-tokens",
        )
    counts = sorted(int(c) for c in split_list(args.clients))
    if not counts or min(counts) < 1 or len(set(counts)) != len(counts):
        raise ValueError(f"--clients: distinct counts >= 1, got {args.clients!r}")
    if args.slo_tokens_per_s is not None and not args.slo_tokens_per_s > 0:
        raise ValueError(f"--slo-tokens-per-s must be > 0, got {args.slo_tokens_per_s}")
    sweep_has_a_baseline = 1 in counts and "cloud-ar" in split_list(args.modes)
    if len(counts) > 1 and args.slo_tokens_per_s is None and not sweep_has_a_baseline:
        raise ValueError(
            "the default SLO is half of single-client cloud-ar in the sweep: include 1 in --clients and cloud-ar in "
            "--modes, or give --slo-tokens-per-s",
        )
    return counts


def _modes_and_links(args: argparse.Namespace, hardware: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The modes the profile can cost (cloud-sd left out of the default where it cannot) and the links."""
    from edgespec.link import PROFILES

    modes = split_list(args.modes)
    if "cloud-sd" in modes and hardware.server_draft_ms_per_token is None:
        if args.modes != DEFAULT_MODES:
            hardware.server_drafter()  # raises: what is missing and how to add it
        modes = tuple(m for m in modes if m != "cloud-sd")
        print(
            f"note: cloud-sd left out: the {hardware.name} profile has no server-side draft cost "
            "(server_draft_ms_per_token)",
            file=sys.stderr,
        )
    links = split_list(args.profiles)
    for name in links:
        if name not in PROFILES:
            raise ValueError(f"unknown link profile {name!r}; choose from {', '.join(PROFILES)}")
    return modes, links


def run_simulate(args: argparse.Namespace) -> int:
    from edgespec.drivers.trace import load_traces
    from edgespec.hostinfo import host_facts
    from edgespec.sim.simulate import simulate

    if args.window:  # the default modes include some a target engine's costs cannot price (exits, cloud-sd)
        modes = WINDOW_MODES if args.modes == DEFAULT_MODES else split_list(args.modes)
        return run_window(args, _sim_config(args, modes, 1))
    traces = load_traces(args.traces)
    meta = json.loads((Path(args.traces) / "meta.json").read_text())
    counts = _client_counts(args, traces)
    hardware = resolve_hardware(args)
    modes, links = _modes_and_links(args, hardware)
    config = _sim_config(args, modes, counts[-1])
    summary, records = simulate(traces, hardware, links, config)
    # The machine whose probe gave the costs (host: all of them; h200: the edge's), not the verifier's.
    summary["host"] = {
        **(hardware.host or host_facts(threads_per_process=1, dtype=meta["dtype"])),
        "role": "simulated: the costs named in the hardware profile; this machine ran the simulation and (host / "
        "h200) its probe gave the edge's costs",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "edgespec " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary["config"] = _summary_config(args, meta, traces, hardware, counts[-1])
    pictures: list[str] = []  # the PNGs this run wrote
    capacity_report, first_link_points = "", None
    if len(counts) > 1:
        capacity_report, first_link_points = _capacity_sweeps(
            args,
            traces,
            hardware,
            links,
            counts,
            config,
            summary,
            out,
            pictures,
        )
    # The map shows each other mode against cloud-ar: with cloud-ar alone there is nothing to draw.
    if not args.no_plots and any(Mode.parse(m) is not Mode.CLOUD_AR for m in config.modes):
        _speedup_map(traces, hardware, config, summary, out)
        pictures.append("speedup-map.png")
    with (out / "results.jsonl").open("w") as sink:
        for record in records:
            sink.write(json.dumps(record) + "\n")
    summary["colocated"] = _colocated(first_link_points, traces, hardware, links, counts, config)
    _write_report(args, summary, hardware, command, capacity_report, out)
    print(f"wrote {out}/summary.json, report.md, results.jsonl" + "".join(f", {name}" for name in pictures))
    return 0


def _sim_config(args: argparse.Namespace, modes: tuple[str, ...], clients: int) -> Any:
    """The `SimConfig` the flags name, for ``clients`` clients (a sweep's largest count). Apart
    from `run_simulate` so the handler reads as the steps of a run."""
    from edgespec.drivers.trace_backends import ExitOracle
    from edgespec.sim.simulate import SimConfig

    return SimConfig(
        modes=modes,
        max_new_tokens=args.max_new_tokens,
        gamma=args.gamma,
        adaptive_gamma=args.adaptive_gamma,
        max_gamma=args.max_gamma,
        clients=clients,
        max_batch=args.max_batch,
        branches=args.branches,
        guess_verdict=not args.no_guess,
        runner_up=args.runner_up,
        draft_stop=args.draft_stop,
        early_verdicts=args.early_verdicts,
        exit_oracle=ExitOracle.parse(args.exit_oracle) if args.exit_oracle else None,
        exit_candidates=args.exit_vocab == "candidates",
    )


def _colocated(
    first_link_points: Any,
    traces: list[Any],
    hardware: Any,
    links: tuple[str, ...],
    counts: list[int],
    config: Any,
) -> Any:
    """The co-located comparison. It reads the first link's sweep points (simulated here only
    when no sweep ran and there is a cloud-sd to compare with)."""
    from edgespec.link import PROFILES
    from edgespec.sim.simulate import clients_sweep, colocated_comparison, link_for

    first = first_link_points or {}
    if not first and "cloud-sd" in config.modes and hardware.server_draft_ms_per_token is not None:
        first = clients_sweep(
            traces,
            hardware,
            link_for(PROFILES[links[0]], hardware),
            links[0],
            config.modes,
            counts,
            config,
        )
    return colocated_comparison(first, hardware, links[0], config.modes, config)


def _write_report(
    args: argparse.Namespace,
    summary: dict[str, Any],
    hardware: Any,
    command: str,
    capacity_report: str,
    out: Path,
) -> None:
    """summary.json and report.md (the bench report's tables, the capacity sweeps, the co-located
    comparison and, with --compare-bench, the comparison with a measured run); prints the report."""
    from edgespec.bench.report import render_markdown
    from edgespec.sim.simulate import render_colocated

    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    report = render_markdown(summary, command).replace(
        "# edgespec benchmark",
        f"# edgespec simulation ({hardware.name}: {hardware.source})",
    )
    report += capacity_report + render_colocated(summary["colocated"])
    if args.compare_bench:
        comparison = compare_with_bench(summary, json.loads(Path(args.compare_bench).read_text()))
        summary["compared_with_bench"] = comparison
        report += render_comparison(comparison, args.compare_bench)
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "report.md").write_text(report)
    print(report)


def _summary_config(
    args: argparse.Namespace, meta: dict[str, Any], traces: list[Any], hardware: Any, clients: int
) -> dict[str, Any]:
    """What the simulation ran, in the shape of a bench summary's config."""
    return {
        "target": meta["target"],
        "draft": meta["draft"],
        "dtype": meta["dtype"],
        "draft_backend": f"simulated ({hardware.name})",
        "gamma": args.gamma,
        "draft_stop": args.draft_stop,
        "runner_up": args.runner_up,
        "max_new_tokens": args.max_new_tokens,
        "prompts": sorted({t.prompt_set for t in traces}),
        "num_prompts": len(traces),
        "exits": meta["exits"],
        "price": PriceModel().__dict__,
        "clients": clients,
        "hardware": hardware.__dict__,
        "simulated": True,
    }


def _capacity_sweeps(
    args: argparse.Namespace,
    traces: list[Any],
    hardware: Any,
    links: tuple[str, ...],
    counts: list[int],
    config: Any,
    summary: dict[str, Any],
    out: Path,
    pictures: list[str],
) -> tuple[str, Any]:
    """A --clients sweep per link into ``summary``; returns its report and the first link's points."""
    from edgespec.capacity import capacity_table, default_slo, plot_capacity, render_capacity_markdown
    from edgespec.cli.progress import progress
    from edgespec.link import PROFILES
    from edgespec.sim.simulate import clients_sweep, link_for

    capacity_report = ""
    first_link_points = None
    summary["sweep"], summary["capacity"] = {}, {}
    for name in progress(links, desc="capacity sweeps", unit="link"):
        points = clients_sweep(traces, hardware, link_for(PROFILES[name], hardware), name, config.modes, counts, config)
        if name == links[0]:
            first_link_points = points
        for count, per_mode in points.items():
            summary["sweep"].setdefault(str(count), {"profiles": {}})["profiles"][name] = per_mode
        slo, source = (
            (args.slo_tokens_per_s, "--slo-tokens-per-s")
            if args.slo_tokens_per_s
            else (
                default_slo(points),
                "half of single-client cloud-ar, simulated in this sweep",
            )
        )
        table = capacity_table(points, slo)
        summary["capacity"][name] = {"slo_source": source, **table}
        where = (
            f"Simulated on `{hardware.name}` costs, link `{name}`; each point's clients start together on one "
            f"batching verifier (up to {config.max_batch} sessions per pass), one trace each (traces reused "
            f"round-robin past {len(traces)}). Server busy share and s/token: the simulated verifier's own busy time."
        )
        capacity_report += render_capacity_markdown(points, table, source, where).replace(
            "## Capacity",
            f"## Capacity: {name}",
            1,
        )
        capacity_report += capacity_ratio_sentence(table)
        if not args.no_plots:
            suffix = "" if name == links[0] else f"-{name}"
            plot_capacity(points, slo, f"simulated, {hardware.name}, {name}", out / f"clients{suffix}.png")
            pictures.append(f"clients{suffix}.png")
    return capacity_report, first_link_points


def _speedup_map(traces: list[Any], hardware: Any, config: Any, summary: dict[str, Any], out: Path) -> None:
    """Each mode's speedup over cloud-ar across round trips and decode times, into ``summary`` and a PNG."""
    from edgespec.sim.plots import plot_speedup_map
    from edgespec.sim.simulate import SimConfig, speedup_grid

    grid = speedup_grid(
        traces,
        hardware,
        config.modes,
        HEATMAP_RTTS_MS,
        HEATMAP_DECODE_MS,
        SimConfig(**{**config.__dict__, "clients": 1}),
    )
    summary["speedup_map"] = {"rtt_ms": HEATMAP_RTTS_MS, "decode_ms": HEATMAP_DECODE_MS, "speedup": grid}
    plot_speedup_map(
        grid,
        HEATMAP_RTTS_MS,
        HEATMAP_DECODE_MS,
        f"simulated on {hardware.name} costs, scaled to each decode time",
        out / "speedup-map.png",
    )
