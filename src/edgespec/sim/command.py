"""`edgespec trace` and `edgespec simulate`."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from edgespec.bench.metrics import PriceModel
from edgespec.cli_rounds import add_round_policy_arguments
from edgespec.core.modes import Mode

HEATMAP_RTTS_MS = (0, 10, 25, 50, 100, 200)
HEATMAP_DECODE_MS = (5, 10, 20, 40, 80, 160, 320)


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


DEFAULT_MODES = "cloud-ar,sd,sd-ee,sd-ee-predraft,sd-ee-pipelined,cloud-sd"


def add_sim_parsers(subparsers: Any) -> None:
    trace = subparsers.add_parser("trace", help="record greedy traces: the target's continuation, the draft's and exits' choices along it")
    trace.add_argument("--target", default="qwen2.5-coder-1.5b")
    trace.add_argument("--draft", default="qwen2.5-coder-0.5b")
    trace.add_argument("--exits", default="auto", help="auto | none | DIR | logit-lens:L1,L2")
    trace.add_argument("--prompts", default="mtbench,humaneval", help="comma-separated: mtbench, humaneval (evaluation), sharegpt (held-out ShareGPT first turns, for tuning), FILE.jsonl")
    trace.add_argument("--num-prompts", type=int, default=6)
    trace.add_argument("--max-new-tokens", type=int, default=64)
    trace.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    trace.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    trace.add_argument("--out", default="out/traces")
    trace.set_defaults(handler=run_trace)

    sim = subparsers.add_parser("simulate", help="replay traces through the round core on a simulated clock")
    sim.add_argument("--traces", default="out/traces")
    sim.add_argument("--hardware", default="host", help="host (probed here, cached) | h200 (measured costs) | FILE.json")
    sim.add_argument("--target", default="qwen2.5-coder-1.5b", help="for --hardware host: the model to probe")
    sim.add_argument("--draft", default="qwen2.5-coder-0.5b")
    sim.add_argument("--draft-backend", default="llamacpp", choices=["llamacpp", "transformers"])
    sim.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    sim.add_argument("--refresh-probe", action="store_true", help="probe this host again instead of using the cached profile")
    sim.add_argument("--profiles", default="wan", help="comma-separated: lan, wan, cellular")
    sim.add_argument("--modes", default=DEFAULT_MODES, help="cloud-sd needs the profile's server-side draft cost (dropped from the default when unknown)")
    sim.add_argument("--clients", default="1", help="N, or a sweep N1,N2,... (clients sharing one batching verifier)")
    sim.add_argument("--gamma", type=int, default=4)
    sim.add_argument("--adaptive-gamma", action="store_true")
    sim.add_argument("--max-gamma", type=int, default=8)
    add_round_policy_arguments(sim)
    sim.add_argument(
        "--exit-vocab", choices=("candidates", "full"), default="candidates",
        help="what the traces' exits score, as `serve --exit-vocab`: the draft's top-8 ids per token (default) or the whole vocabulary",
    )
    sim.add_argument(
        "--exit-oracle", default=None, metavar="LAYER[:ACCURACY]",
        help="design question: replace the traces' exits by one at LAYER that costs nothing and streams the true verdict with probability ACCURACY (default 1); use with --early-verdicts on",
    )
    sim.add_argument("--max-new-tokens", type=int, default=64)
    sim.add_argument("--max-batch", type=int, default=32)
    sim.add_argument(
        "--slo-tokens-per-s", type=float, default=None,
        help="a --clients sweep's SLO: per-client tokens/s (p10) each client must keep (default: half of single-client cloud-ar in the sweep)",
    )
    sim.add_argument("--no-plots", action="store_true")
    sim.add_argument("--compare-bench", metavar="SUMMARY.json", help="a measured `edgespec bench` summary of the same prompts: report simulated vs measured tokens/s per mode")
    sim.add_argument("--out", default="out/simulate")
    sim.set_defaults(handler=run_simulate)


def run_trace(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from edgespec.cli import resolve_exits
    from edgespec.data.prompt_sets import load_prompts
    from edgespec.models.loading import load_model, resolve_dtype
    from edgespec.models.target import TargetRuntime
    from edgespec.prompting import eos_token_ids, render_prompt
    from edgespec.sim.trace import record_trace
    from edgespec.drivers.trace import write_traces

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype)
    target = load_model(args.target, dtype)
    draft = load_model(args.draft, dtype)
    exits = resolve_exits(args.exits, target.model, args.target)
    runtime = TargetRuntime(target.model, exits)
    eos = eos_token_ids(target.model, target.tokenizer)
    records = [(name, record) for name in _split(args.prompts) for record in load_prompts(name, args.num_prompts)]
    traces = []
    for name, record in tqdm(records, desc="tracing", unit="prompt"):
        prompt_ids = render_prompt(target.tokenizer, record.text if not record.is_chat else record.messages, raw=not record.is_chat)
        traces.append(record_trace(runtime, draft.model, prompt_ids, args.max_new_tokens, eos, record.id, name))
    meta = {
        "target": args.target, "draft": args.draft, "dtype": dtype, "exits": args.exits,
        "exit_layers": list(exits.layers) if exits is not None else [], "max_new_tokens": args.max_new_tokens,
        "eos_ids": sorted(eos), "command": "edgespec " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    }
    path = write_traces(args.out, traces, meta)
    print(f"wrote {len(traces)} traces to {path}")
    return 0


def resolve_hardware(args: argparse.Namespace) -> Any:
    from edgespec.drivers.cost_profile import HardwareProfile, h200_profile
    from edgespec.sim.probe import cache_path, host_profile

    if args.hardware == "host":
        return host_profile(args.target, args.draft, args.draft_backend, _dtype(args.dtype), refresh=args.refresh_probe)
    if args.hardware == "h200":
        edge = cache_path(args.target, args.draft, args.draft_backend, _dtype(args.dtype))
        return h200_profile(HardwareProfile.load(edge) if edge.is_file() else None)
    return HardwareProfile.load(args.hardware)


def _dtype(dtype: str) -> str:
    from edgespec.models.loading import resolve_dtype

    return resolve_dtype(dtype)


def run_simulate(args: argparse.Namespace) -> int:
    from edgespec.bench.report import render_markdown
    from edgespec.netem import PROFILES
    from edgespec.capacity import capacity_table, default_slo, plot_capacity, render_capacity_markdown
    from edgespec.sim.plots import plot_speedup_map
    from edgespec.sim.simulate import SimConfig, clients_sweep, colocated_comparison, link_for, render_colocated, simulate, speedup_grid
    from edgespec.drivers.trace_backends import ExitOracle
    from edgespec.drivers.trace import load_traces

    traces = load_traces(args.traces)
    meta = json.loads((Path(args.traces) / "meta.json").read_text())
    too_short = [t.id for t in traces if not t.ended_in_eos and len(t.continuation) < args.max_new_tokens]
    if too_short:
        raise ValueError(f"traces {too_short} hold fewer than --max-new-tokens {args.max_new_tokens} tokens: trace with a larger --max-new-tokens")
    counts = sorted(int(c) for c in _split(args.clients))
    if not counts or min(counts) < 1 or len(set(counts)) != len(counts):
        raise ValueError(f"--clients: distinct counts >= 1, got {args.clients!r}")
    if args.slo_tokens_per_s is not None and not args.slo_tokens_per_s > 0:
        raise ValueError(f"--slo-tokens-per-s must be > 0, got {args.slo_tokens_per_s}")
    if len(counts) > 1 and args.slo_tokens_per_s is None and (1 not in counts or "cloud-ar" not in _split(args.modes)):
        raise ValueError("the default SLO is half of single-client cloud-ar in the sweep: include 1 in --clients and cloud-ar in --modes, or give --slo-tokens-per-s")
    hardware = resolve_hardware(args)
    modes = _split(args.modes)
    if "cloud-sd" in modes and hardware.server_draft_ms_per_token is None:
        if args.modes != DEFAULT_MODES:
            hardware.server_drafter()  # raises: what is missing and how to add it
        modes = tuple(m for m in modes if m != "cloud-sd")
        print(f"note: cloud-sd left out: the {hardware.name} profile has no server-side draft cost (server_draft_ms_per_token)", file=sys.stderr)
    links = _split(args.profiles)
    for name in links:
        if name not in PROFILES:
            raise ValueError(f"unknown link profile {name!r}; choose from {', '.join(PROFILES)}")
    config = SimConfig(
        modes=modes, max_new_tokens=args.max_new_tokens, gamma=args.gamma,
        adaptive_gamma=args.adaptive_gamma, max_gamma=args.max_gamma, clients=counts[-1], max_batch=args.max_batch,
        branches=args.branches, guess_verdict=not args.no_guess, runner_up=args.runner_up, draft_stop=args.draft_stop, early_verdicts=args.early_verdicts,
        exit_oracle=ExitOracle.parse(args.exit_oracle) if args.exit_oracle else None,
        exit_candidates=args.exit_vocab == "candidates",
    )
    summary, records = simulate(traces, hardware, links, config)
    from edgespec.hostinfo import host_facts

    # The machine whose probe gave the costs (host: all of them; h200: the edge's), not the verifier's.
    summary["host"] = {
        **(hardware.host or host_facts(threads_per_process=1, dtype=meta["dtype"])),
        "role": "simulated: the costs named in the hardware profile; this machine ran the simulation and (host / h200) its probe gave the edge's costs",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "edgespec " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary["config"] = {
        "target": meta["target"], "draft": meta["draft"], "dtype": meta["dtype"], "draft_backend": f"simulated ({hardware.name})",
        "gamma": args.gamma, "draft_stop": args.draft_stop, "runner_up": args.runner_up, "max_new_tokens": args.max_new_tokens, "prompts": sorted({t.prompt_set for t in traces}),
        "num_prompts": len(traces), "exits": meta["exits"], "price": PriceModel().__dict__, "clients": counts[-1],
        "hardware": hardware.__dict__, "simulated": True,
    }
    capacity_report = ""
    pictures: list[str] = []  # the PNGs this run wrote
    first_link_points = None
    if len(counts) > 1:
        summary["sweep"], summary["capacity"] = {}, {}
        for name in links:
            points = clients_sweep(traces, hardware, link_for(PROFILES[name], hardware), name, config.modes, counts, config)
            if name == links[0]:
                first_link_points = points
            for count, per_mode in points.items():
                summary["sweep"].setdefault(str(count), {"profiles": {}})["profiles"][name] = per_mode
            slo, source = (args.slo_tokens_per_s, "--slo-tokens-per-s") if args.slo_tokens_per_s else (default_slo(points), "half of single-client cloud-ar, simulated in this sweep")
            table = capacity_table(points, slo)
            summary["capacity"][name] = {"slo_source": source, **table}
            where = (
                f"Simulated on `{hardware.name}` costs, link `{name}`; each point's clients start together on one batching verifier "
                f"(up to {config.max_batch} sessions per pass), one trace each (traces reused round-robin past {len(traces)}). "
                "Server busy share and s/token: the simulated verifier's own busy time."
            )
            capacity_report += render_capacity_markdown(points, table, source, where).replace("## Capacity", f"## Capacity: {name}", 1)
            capacity_report += capacity_ratio_sentence(table)
            if not args.no_plots:
                suffix = "" if name == links[0] else f"-{name}"
                plot_capacity(points, slo, f"simulated, {hardware.name}, {name}", out / f"clients{suffix}.png")
                pictures.append(f"clients{suffix}.png")
    # The map shows each other mode against cloud-ar: with cloud-ar alone there is nothing to draw.
    if not args.no_plots and any(Mode.parse(m) is not Mode.CLOUD_AR for m in config.modes):
        grid = speedup_grid(traces, hardware, config.modes, HEATMAP_RTTS_MS, HEATMAP_DECODE_MS, SimConfig(**{**config.__dict__, "clients": 1}))
        summary["speedup_map"] = {"rtt_ms": HEATMAP_RTTS_MS, "decode_ms": HEATMAP_DECODE_MS, "speedup": grid}
        plot_speedup_map(grid, HEATMAP_RTTS_MS, HEATMAP_DECODE_MS, f"simulated on {hardware.name} costs, scaled to each decode time", out / "speedup-map.png")
        pictures.append("speedup-map.png")
    with (out / "results.jsonl").open("w") as sink:
        for record in records:
            sink.write(json.dumps(record) + "\n")
    # The co-located comparison reads the first link's sweep points (simulated here only when no
    # sweep ran and there is a cloud-sd to compare with).
    first = first_link_points or {}
    if not first and "cloud-sd" in config.modes and hardware.server_draft_ms_per_token is not None:
        first = clients_sweep(traces, hardware, link_for(PROFILES[links[0]], hardware), links[0], config.modes, counts, config)
    summary["colocated"] = colocated_comparison(first, hardware, links[0], config.modes, config)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    report = render_markdown(summary, command).replace("# edgespec benchmark", f"# edgespec simulation ({hardware.name}: {hardware.source})")
    report += capacity_report + render_colocated(summary["colocated"])
    if args.compare_bench:
        comparison = compare_with_bench(summary, json.loads(Path(args.compare_bench).read_text()))
        summary["compared_with_bench"] = comparison
        report += render_comparison(comparison, args.compare_bench)
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "report.md").write_text(report)
    print(report)
    print(f"wrote {out}/summary.json, report.md, results.jsonl" + "".join(f", {name}" for name in pictures))
    return 0


def compare_with_bench(simulated: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    """Per profile and mode: simulated and measured tokens/s, and their ratio."""
    rows: dict[str, Any] = {}
    for profile, modes in simulated["profiles"].items():
        for mode, stats in modes.items():
            real = measured.get("profiles", {}).get(profile, {}).get(mode)
            if not real:
                continue
            rows.setdefault(profile, {})[mode] = {
                "simulated_tokens_per_s": stats["tokens_per_s"],
                "measured_tokens_per_s": real["tokens_per_s"],
                "ratio": stats["tokens_per_s"] / real["tokens_per_s"] if real["tokens_per_s"] else 0.0,
                "simulated_vs_cloud_ar": stats.get("speedup_vs_cloud_ar", 0.0),
                "measured_vs_cloud_ar": real.get("speedup_vs_cloud_ar", 0.0),
                "simulated_hit_rate": stats.get("hit_rate", 0.0),
                "measured_hit_rate": real.get("hit_rate", 0.0),
            }
    return rows


def render_comparison(comparison: dict[str, Any], source: str) -> str:
    lines = ["", f"## Simulated vs measured (`{source}`)", ""]
    for profile, modes in comparison.items():
        lines += [f"### {profile}", "", "| mode | simulated tok/s | measured tok/s | simulated / measured | vs cloud-ar sim / meas | hit rate sim / meas |", "|---|---|---|---|---|---|"]
        for mode, row in modes.items():
            lines.append(
                f"| {mode} | {row['simulated_tokens_per_s']:.2f} | {row['measured_tokens_per_s']:.2f} | {row['ratio']:.2f} | "
                f"{row['simulated_vs_cloud_ar']:.2f}x / {row['measured_vs_cloud_ar']:.2f}x | {row['simulated_hit_rate']:.2f} / {row['measured_hit_rate']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def capacity_ratio_sentence(table: dict[str, Any]) -> str:
    """The capacity ratios in words, against cloud-ar and (where it ran) cloud-sd."""
    modes = table["modes"]
    parts = []
    for base in ("cloud-ar", "cloud-sd"):
        if base not in modes:
            continue
        ratios = []
        for mode, row in modes.items():
            if mode == base:
                continue
            value = row.get(f"vs_{base}")
            ratios.append(f"{mode} {'n/a' if value is None else f'{value:.2f}x'}")
        parts.append(f"Capacity vs {base} ({modes[base]['capacity']} clients): " + ", ".join(ratios) + ".")
    if "cloud-sd" not in modes:
        parts.append("(cloud-sd, the co-located baseline, was not in this run's modes.)")
    return " ".join(parts) + "\n\n"
