"""`edgespec simulate --window`: where per-request speculation beats the fastest `cloud-ar`.

    edgespec profile engine --engine llamacpp --out docs/window/engine-llamacpp.json          # the fastest engine here
    edgespec profile engine --engine transformers --out docs/window/engine-transformers.json  # another verifier
    edgespec simulate --window --traces out/traces-sharegpt --hardware docs/window/engine-llamacpp.json \\
        --also-engines docs/window/engine-transformers.json --edge host,jetson-orin --profiles wan,lan,cellular \\
        --clients 1,2,4,8,16 --out out/window

Writes window.png (the map with the settings placed on it), summary.json and report.md (the
smallest winning decode time per mode, edge and link; the capacity crossing), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

# The guess-based modes: sd-ee needs exits and cloud-sd a server-side draft, which a target
# engine's cost file does not price.
WINDOW_MODES = ("cloud-ar", "sd", "sd-ee-predraft", "sd-ee-pipelined")
MAP_DECODE_MS = (5, 10, 20, 40, 80, 160, 320, 640)
MAP_RTT_MS = (0, 10, 25, 50, 100, 150, 200)
CAPACITY_COUNTS = (1, 2, 4, 8, 16)


def add_window_arguments(sim: Any) -> None:
    sim.add_argument(
        "--window",
        action="store_true",
        help="where speculation beats the fastest cloud-ar: the map with measured settings on it, the smallest "
        "winning target decode time per mode and edge, the capacity crossing; --hardware: the fastest engine's "
        "`profile engine --out` file",
    )
    sim.add_argument(
        "--edge",
        default=None,
        help="the edge device(s), comma-separated: host (this host's draft, probed), jetson-orin (assumed, "
        "docs/window), or FILE.json; with --hardware ENGINE.json the first replaces the profile's edge "
        "(default: host; with --window: host,jetson-orin)",
    )
    sim.add_argument(
        "--also-engines", default="", help="--window: other `profile engine` files of this host, placed as markers"
    )
    sim.add_argument("--gpu", default="h200", help="--window: the GPU panels' verifier: h200 | FILE.json | none")
    sim.add_argument(
        "--seed-setting",
        default=None,
        help="--window: the seed's verifier (A100 + 7B, assumed; default docs/window) | FILE.json | none",
    )


def resolve_edge(spec: str, args: argparse.Namespace) -> Any:
    from edgespec.sim.engine_profile import NAMED_EDGES, EdgeCosts
    from edgespec.sim.probe import probe_edge

    if spec == "host":
        return EdgeCosts.of(probe_edge(args.draft, args.draft_backend, refresh=args.refresh_probe))
    return EdgeCosts.load(NAMED_EDGES.get(spec, spec))


def edge_specs(args: argparse.Namespace) -> list[str]:
    from edgespec.cli.trace import split_list

    return list(split_list(args.edge or ("host,jetson-orin" if args.window else "host")))


def run_window(args: argparse.Namespace, config: Any) -> int:
    """The window for ``config`` (a `SimConfig` of the compared modes, one client).

    Long because it is the command's whole recipe: panels (verifier shape x edge), their
    markers, the thresholds and the capacity crossing, then the files."""
    from edgespec.cli.trace import split_list
    from edgespec.drivers.trace import load_traces
    from edgespec.link import PROFILES
    from edgespec.sim.engine_profile import WINDOW_DATA, load_verifier, with_edge
    from edgespec.sim.simulate import link_for
    from edgespec.sim.window import best_mode_grid, capacity_crossing, marker_speedup, thresholds
    from edgespec.sim.window_plot import Marker, Panel, plot_window

    if not Path(args.hardware).is_file():
        raise ValueError(
            "--window needs --hardware FILE.json: the fastest engine's `edgespec profile engine --out` file"
        )
    traces = load_traces(args.traces)
    modes = config.modes
    links = split_list(args.profiles)
    edges = {spec: resolve_edge(spec, args) for spec in edge_specs(args)}
    fastest_name = Path(args.hardware).stem
    shapes: dict[str, Any] = {"cpu": lambda edge: load_verifier(args.hardware, edge)}
    if args.gpu != "none":
        shapes["gpu"] = lambda edge: with_edge(_gpu_verifier(args.gpu), edge)
    seed_file = args.seed_setting or str(WINDOW_DATA / "verifier-a100-7b-assumed.json")
    wan = PROFILES[links[0]]
    panels, summary_panels = [], []
    for shape, build in shapes.items():
        for spec, edge in edges.items():
            verifier = build(edge)
            link = link_for(wan, verifier)
            grid = best_mode_grid(traces, verifier, modes, MAP_RTT_MS, MAP_DECODE_MS, config)
            markers = []
            engines = [args.hardware, *split_list(args.also_engines)] if shape == "cpu" else []
            for path in engines:  # this host's engines, each against the fastest engine's cloud-ar
                point = marker_speedup(traces, load_verifier(path, edge), verifier, modes, link, config)
                markers.append((f"{Path(path).stem} vs {fastest_name} cloud-ar", verifier.forward_ms[1], point))
            if shape == "gpu":  # the GPU's own cloud-ar: the fastest engine measured there
                point = marker_speedup(traces, verifier, verifier, modes, link, config)
                markers.append((f"{args.gpu} vs its own cloud-ar", verifier.forward_ms[1], point))
                if seed_file != "none" and spec == "jetson-orin":
                    seed = load_verifier(seed_file, edge)
                    point = marker_speedup(traces, seed, seed, modes, link_for(wan, seed), config)
                    markers.append(("seed: Jetson + A100 + 7B (assumed)", seed.forward_ms[1], point))
            title = f"verifier's cost shape: {verifier.name.split(' + ')[0]}\nedge: {edge.name}"
            panels.append(
                Panel(
                    title,
                    MAP_DECODE_MS,
                    MAP_RTT_MS,
                    grid["best"],
                    [Marker(label, x, wan.rtt_ms, p["best"]) for label, x, p in markers],
                )
            )
            summary_panels.append(
                {
                    "verifier_shape": shape,
                    "verifier": verifier.name,
                    "verifier_source": verifier.source,
                    "edge": spec,
                    "edge_costs": edge.__dict__,
                    "map": grid,
                    "markers": [{"label": label, "decode_ms": x, "rtt_ms": wan.rtt_ms, **p} for label, x, p in markers],
                    "thresholds": thresholds(traces, verifier, modes, links, config),
                }
            )
    capacity = None
    if "sd" in modes:
        counts = sorted({int(c) for c in split_list(args.clients)} | {1})
        counts = counts if len(counts) > 1 else list(CAPACITY_COUNTS)
        host_edge = next(iter(edges.values()))
        capacity = capacity_crossing(traces, load_verifier(args.hardware, host_edge), links[0], counts, config)
        capacity["edge"] = host_edge.name
    baseline = (
        f"cloud-ar on {fastest_name} (CPU panels: the fastest engine this host runs); GPU panels: the GPU "
        "profile's own cloud-ar"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    drawn = plot_window(
        panels,
        f"Where per-request speculation pays (simulated; {len(traces)} traces, γ = {args.gamma}; markers at the "
        f"{links[0]} round trip)\nbaseline: {baseline}",
        "the fastest cloud-ar",
        out / "window.png",
    )
    command = "edgespec " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary = {"command": command, "baseline": baseline, "panels": summary_panels, "capacity": capacity}
    summary["legends"] = drawn
    summary["config"] = {**config.__dict__, "traces": args.traces, "links": list(links)}
    report = render_window(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "report.md").write_text(report)
    print(report)
    print(f"wrote {out}/window.png, summary.json, report.md")
    return 0


def _gpu_verifier(spec: str) -> Any:
    """The GPU panels' verifier: the H200's measured costs, or a hardware profile file."""
    from edgespec.drivers.cost_profile import HardwareProfile, h200_profile

    if spec != "h200":
        return HardwareProfile.load(spec)
    profile = h200_profile(None)
    profile.name = "H200, 1.5B target, eager transformers (random weights)"
    return profile


def _threshold_cell(found: dict[str, Any]) -> str:
    if found["kind"] == "never":
        return f"never (searched up to {found['searched_ms'][1]:g} ms)"
    if found["kind"] == "always":
        return f"≤ {found['decode_ms']:g} ms (always)"
    return f"{found['decode_ms']:.1f} ms"


def render_window(summary: dict[str, Any]) -> str:
    """The thresholds table per link, the markers, the capacity crossing, as markdown."""
    panels = summary["panels"]
    links = summary["config"]["links"]
    modes = [m for m in summary["config"]["modes"] if m != "cloud-ar"]
    lines = [
        "# Where per-request speculation pays (simulated)",
        "",
        f"Baseline: {summary['baseline']}. `{summary['command']}`",
    ]
    for link in links:
        lines += [
            "",
            f"## Smallest target decode time at which each mode beats the fastest cloud-ar: {link}",
            "",
            "| mode | " + " | ".join(f"{p['verifier']}" for p in panels) + " |",
            "|---|" + "---|" * len(panels),
        ]
        for mode in modes:
            cells = [_threshold_cell(p["thresholds"][link][mode]) for p in panels]
            lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    lines += ["", "## Settings on the map (each against its own baseline, simulated)", ""]
    lines += ["| panel | setting | x: decode ms | best mode | speed-up |", "|---|---|---|---|---|"]
    for p in panels:
        for m in p["markers"]:
            lines.append(
                f"| {p['verifier']} | {m['label']} | {m['decode_ms']:.1f} | {m['best_mode']} | {m['best']:.2f}× |"
            )
    capacity = summary["capacity"]
    if capacity:
        lines += [
            "",
            f"## Capacity, simulated: `{capacity['mode']}` against `cloud-ar` in aggregate, {capacity['link']}, "
            f"edge {capacity['edge']}",
            "",
            "| clients | cloud-ar tok/s | sd tok/s | ratio |",
            "|---|---|---|---|",
        ]
        for count, point in capacity["points"].items():
            lines.append(
                f"| {count} | {point['cloud-ar_aggregate_tokens_per_s']:.2f} | "
                f"{point[capacity['mode'] + '_aggregate_tokens_per_s']:.2f} | {point['ratio']:.2f}× |"
            )
        ahead = capacity["fewest_clients_ahead"]
        lines += ["", f"Fewest clients at which {capacity['mode']} is ahead: {ahead or 'none of those simulated'}."]
    return "\n".join(lines) + "\n"
