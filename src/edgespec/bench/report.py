"""Benchmark outputs: report.md tables and PNG plots (speedup per mode and profile; one round
timeline showing when edge, link and cloud are busy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLUMNS = [
    ("engine", "engine", "{}"),
    ("aggregate tokens/s", "aggregate_tokens_per_s", "{:.2f}"),
    ("aggregate decode tok/s", "decode_tokens_per_s", "{:.2f}"),
    ("per-client tok/s median", "per_client_tokens_per_s_median", "{:.2f}"),
    ("per-client p10", "per_client_tokens_per_s_p10", "{:.2f}"),
    ("TTFT p90 ms", "ttft_ms_p90", "{:.0f}"),
    ("server busy share", "server_busy_share", "{:.2f}"),
    ("server s/token (passes once)", "server_s_per_token", "{:.3f}"),
    ("tokens/s", "tokens_per_s", "{:.2f}"),
    ("vs cloud-ar", "speedup_vs_cloud_ar", "{:.2f}x"),
    ("vs fastest cloud-ar", "speedup_vs_fastest_cloud_ar", "{:.2f}x"),
    ("ms/token", "ms_per_token", "{:.0f}"),
    ("TTFT ms", "ttft_ms", "{:.0f}"),
    ("tok/round", "tokens_per_round", "{:.2f}"),
    ("hit rate", "hit_rate", "{:.2f}"),
    ("pipelined share", "pipelined_share", "{:.2f}"),
    ("branches / shipped / dropped", "branch_counts", "{}"),
    ("hits by source", "hits_by_source_text", "{}"),
    ("edge busy", "edge_busy_share", "{:.2f}"),
    ("cloud busy", "cloud_busy_share", "{:.2f}"),
    ("draft ms/token", "draft_ms_per_token", "{:.1f}"),
    ("target passes/token", "target_passes_per_token", "{:.2f}"),
    ("server s/token", "server_busy_s_per_token", "{:.3f}"),
    ("verify ms/round", "verify_ms_per_round", "{:.0f}"),
    ("bytes/token", "bytes_per_token", "{:.0f}"),
    ("$ / 1k tok", "usd_per_1k_tokens", "{:.5f}"),
    ("queued ms/round", "queued_ms_per_round", "{:.1f}"),
    ("overhead ms/round", "overhead_ms_per_round", "{:.1f}"),
    ("physical limit tok/s", "physical_limit_tokens_per_s", "{:.2f}"),
    ("differs from cloud-ar", "differs_from_cloud_ar", "{}"),
    ("oracle mismatches", "oracle_mismatches", "{}"),
    ("errors", "errors", "{}"),
]


# The server dtype the summary names when the target ran on llama.cpp (its GGUF's own types).
LLAMACPP_DTYPE = "GGUF (llama.cpp)"

# Serving figures that need several concurrent clients to mean anything (edgespec.capacity).
CONCURRENT_ONLY = {
    "aggregate_tokens_per_s",
    "decode_tokens_per_s",
    "per_client_tokens_per_s_median",
    "per_client_tokens_per_s_p10",
    "ttft_ms_p90",
    "server_busy_share",
    "server_s_per_token",
}


def render_markdown(summary: dict[str, Any], command: str) -> str:
    """report.md: what ran and where, how to read the columns, then one table per profile."""
    config = summary["config"]
    lines = _setup_lines(summary, command)
    host = summary.get("host") or config.get("hardware", {}).get("host")
    if host:
        lines += _host_lines(host)
    lines += _core_lines(summary.get("cores"), config)
    lines += _reading_notes(config)
    checked_oracle = any(
        "oracle_mismatches" in stats for modes in summary["profiles"].values() for stats in modes.values()
    )
    many = config.get("clients", 1) > 1
    with_fastest = any(
        "speedup_vs_fastest_cloud_ar" in stats for modes in summary["profiles"].values() for stats in modes.values()
    )
    columns = [
        c
        for c in COLUMNS
        if (c[1] not in CONCURRENT_ONLY or many)
        and (c[1] != "oracle_mismatches" or checked_oracle)
        and (c[1] != "speedup_vs_fastest_cloud_ar" or with_fastest)
    ]
    lines += _correctness_notes(summary.get("server_dtype", config["dtype"]), checked_oracle)
    for profile, modes in summary["profiles"].items():
        lines += _profile_lines(profile, modes, columns)
    return "\n".join(lines) + "\n"


def _setup_lines(summary: dict[str, Any], command: str) -> list[str]:
    """The report's title, the command and the run's configuration in one paragraph, so a table
    is never read without what produced it."""
    config = summary["config"]
    stop = config.get("draft_stop")  # absent from summaries written before the stop existed
    drafting = ("" if stop is None else f", draft stop {stop:g}" if stop else ", full blocks (draft stop 0)") + (
        ", runner-up branches" if config.get("runner_up") else ""
    )
    return [
        "# edgespec benchmark",
        "",
        f"Command: `{command}`",
        "",
        f"Target {config['target']} ({config['dtype']}"
        f"{' → ' + summary['server_dtype'] if summary.get('server_dtype', config['dtype']) != config['dtype'] else ''}"
        f"), draft {config['draft']} on {config['draft_backend']}, "
        f"γ = {config['gamma']}{drafting}, {config['max_new_tokens']} new tokens, "
        f"prompts {', '.join(config['prompts'])} "
        f"({config['num_prompts']} each), exits {config['exits']}. "
        "Server and client in separate processes, one thread each. "
        f"Price model: ${config['price']['gpu_usd_per_hour']}/GPU-hour of verify compute + "
        f"${config['price']['egress_usd_per_gb']}/GB on the wire.",
        "",
    ]


def _host_lines(host: dict[str, Any]) -> list[str]:
    """The host the numbers were measured on (CPU, cores, bf16 support, dtypes as run): timings
    mean little without it."""
    bf16 = ", ".join(
        name for name, key in (("AVX512-BF16", "avx512_bf16"), ("AMX-BF16", "amx_bf16")) if host.get(key)
    ) or ("yes" if host.get("native_bf16") else "no")
    ran = (
        f" Target dtype as run: {host['dtype']}"
        + (f", draft: {host['draft_dtype']}" if host.get("draft_dtype") else "")
        + "."
        if host.get("dtype")
        else ""
    )
    return [
        f"Host: {host.get('cpu')}"
        + (f" ({host['cpu_family_model']})" if host.get("cpu_family_model") else "")
        + f", {host.get('cores')} cores, native bf16: {bf16}, "
        f"torch CPU capability {host.get('torch_cpu_capability')}, "
        f"{host.get('threads_per_process', 1)} thread per process.{ran}"
        + (f" ({host['role']}.)" if host.get("role") else ""),
        "",
    ]


def _core_lines(cores: dict[str, Any] | None, config: dict[str, Any]) -> list[str]:
    """With concurrent clients on a pinned server, where they ran: clients sharing cores slow
    each other, which the per-client figures would otherwise hide. Nothing otherwise."""
    if not (cores and cores.get("server_core") is not None and config.get("clients", 1) > 1):
        return []
    shared = (
        f"the {config['clients']} clients share {len(cores['edge_cores'])} edge core(s) "
        f"(up to {cores['clients_per_edge_core']} per core)"
        if cores["clients_share_cores"]
        else "each client on a core of its own"
    )
    return [f"Cores: server on core {cores['server_core']}; {shared}.", ""]


def _reading_notes(config: dict[str, Any]) -> list[str]:
    """What the less obvious columns measure, and with concurrent clients what is compared:
    the same numbers read differently under batching."""
    lines = [
        "**queued ms/round**: a round's wait at the server before its pass started (behind a pass in flight or other "
        "sessions' passes): as the server reports it per verdict; for cloud-ar (whose stream reports none) the gaps "
        "between the session's consecutive passes. **overhead ms/round**: the edge's wait for a verdict minus the pass "
        "it rode in (the whole batched forward), that queueing and the link's round trips: gRPC, serialisation and "
        "event loops. Under batching it no longer holds the queueing.",
        "",
    ]
    if config.get("clients", 1) > 1:
        lines += [
            f"**{config['clients']} concurrent clients per mode** sharing one batching server: `vs cloud-ar` compares "
            "aggregate tokens/s (all clients' tokens over the wall time); tokens/s is per client. Server s/token "
            "and price count a batched pass once per session riding in it: an upper bound under batching; "
            "**server s/token (passes once)** and **server busy share** count each pass once (the union of the passes "
            "the clients report). Aggregate decode tok/s: every token after each generation's first, over the time "
            "after the first tokens (the union of the decode windows).",
            "",
        ]
    return lines


def _profile_lines(profile: str, modes: dict[str, Any], columns: list[tuple[str, str, str]]) -> list[str]:
    """One profile's section: a row per mode, then where a mode's output differs from cloud-ar
    or from fp32 `generate` (the table gives only the counts)."""
    lines = [
        f"## {profile}",
        "",
        "| mode | " + " | ".join(name for name, _, _ in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for mode, stats in modes.items():
        if "branches" in stats:
            stats = dict(
                stats,
                branch_counts=f"{stats['branches']} / {stats['branches_shipped']} / {stats['branches_dropped']}",
                hits_by_source_text=", ".join(f"{k}: {v}" for k, v in sorted(stats["hits_by_source"].items())) or "–",
            )
        cells = [fmt.format(stats[key]) if key in stats else "–" for _, key, fmt in columns]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    lines.append("")
    for mode, stats in modes.items():
        if stats.get("differs_from_cloud_ar_at"):
            lines.append(
                f"- {mode} differs from cloud-ar (first differing token): "
                f"{', '.join(stats['differs_from_cloud_ar_at'])}"
            )
        if stats.get("oracle_mismatch_at"):
            why = " (edge-only is not lossless by design)" if mode == "edge-only" else ""
            lines.append(f"- {mode} differs from fp32 `generate`{why}: {', '.join(stats['oracle_mismatch_at'])}")
    lines.append("")
    return lines


def _correctness_notes(server_dtype: str, checked_oracle: bool) -> list[str]:
    notes = [
        "**differs from cloud-ar** is self-consistency: each lossless mode's greedy text against this server's own "
        "`cloud-ar` on the same prompt. It is not the oracle."
    ]
    if server_dtype == "bfloat16":
        notes.append(
            "The server ran in **bfloat16**: a verify (γ + 1 rows) and a decode (1 row) round differently, "
            "so where the "
            "target's top two tokens nearly tie a speculative mode and `cloud-ar` can choose differently and the texts "
            "part there; the positions are listed under each table. That is rounding, not a lost token: "
            "`--dtype float32 --check-oracle` tests losslessness."
        )
    elif server_dtype == LLAMACPP_DTYPE:
        notes.append(
            "The target ran on **llama.cpp** (its Q4_K GGUF): its oracle is its own one-token-at-a-time "
            "decoding (`cloud-ar`), and a verify (γ + 1 rows) and a decode (1 row) run different kernels, so a "
            "near-tie may part the texts; fp32 `generate` is another model's arithmetic, not this engine's oracle."
        )
    if checked_oracle:
        notes.append(
            "**oracle mismatches**: outputs that differ from fp32 `generate` of the target "
            "(greedy, the server's EOS ids), "
            "listed with the first differing token and the fp32 margin between the target's top two logits there"
            + (
                "; in bfloat16 a few at small margins are expected, for `cloud-ar` as well."
                if server_dtype == "bfloat16"
                else "."
            )
        )
    else:
        notes.append("Add `--check-oracle` to compare every output with fp32 `generate` of the target.")
    return [" ".join(notes), ""]


def plot_speedups(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = list(summary["profiles"])
    modes = [m for m in next(iter(summary["profiles"].values()))]
    width = 0.8 / max(1, len(modes))
    figure, axis = plt.subplots(figsize=(9, 4.5))
    for index, mode in enumerate(modes):
        values = [summary["profiles"][p].get(mode, {}).get("speedup_vs_cloud_ar", 0.0) for p in profiles]
        axis.bar([i + index * width for i in range(len(profiles))], values, width, label=mode)
    axis.axhline(1.0, color="black", linewidth=0.8)
    axis.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(len(profiles))], profiles)
    axis.set_xlabel("emulated link between edge and cloud")
    axis.set_ylabel("tokens/s ÷ cloud-ar tokens/s (×)")
    axis.set_title("Speedup over cloud autoregressive decoding (above 1: faster than cloud-ar)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_timeline(record: dict[str, Any], path: Path, max_rounds: int = 6) -> None:
    """Who is busy when, for the first rounds of one generation: the edge's drafting, the cloud's
    passes, and between them the link row. The timeline records no send and receive instants, so a
    round's time in flight (uplink, queue and downlink together) is drawn as the gap between the end
    of its block's drafting and the start of its verify; instants the link delivers (early verdicts,
    outages) are ticks. Without any of these (`cloud-ar` streams decodes) the row is dropped and the
    title says so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    events = [e for e in record["stats"]["timeline"] if e["round"] < max_rounds]
    spans = [e for e in events if e["actor"] != "link"]
    ticks = [e for e in events if e["actor"] == "link"]
    in_flight = _in_flight_spans(spans)
    lanes = {"edge": 2, "link": 1, "cloud": 0} if in_flight or ticks else {"edge": 1, "cloud": 0}
    colours = {"draft": "tab:blue", "pre-draft": "tab:cyan", "verify (server)": "tab:red", "decode": "tab:red"}
    figure, axis = plt.subplots(figsize=(11, 3.4))
    shown: dict[str, str] = {}
    for event in spans:
        colour = colours.get(event["what"], "tab:orange")
        width = max(event["end_s"] - event["start_s"], 0.002)
        axis.broken_barh([(event["start_s"], width)], (lanes[event["actor"]] - 0.35, 0.7), facecolors=colour)
        shown.setdefault(event["what"], colour)
    for start, end in in_flight:
        axis.broken_barh([(start, end - start)], (lanes["link"] - 0.2, 0.4), facecolors="tab:gray")
    for event in ticks:
        axis.vlines(event["start_s"], lanes["link"] - 0.45, lanes["link"] + 0.45, colors="black", linewidth=1)
        axis.text(event["start_s"], lanes["link"] + 0.48, event["what"].replace("early@", "e"), fontsize=6)
    handles = [Patch(color=colour, label=what) for what, colour in shown.items()]
    if in_flight:
        handles.append(Patch(color="tab:gray", label="in flight: link + queue (send to verify)"))
    if ticks:
        handles.append(Line2D([], [], color="black", label="arrives at the edge (eL: early verdict of exit L)"))
    axis.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axis.set_yticks(list(lanes.values()), list(lanes))
    axis.set_xlabel("seconds since the request (s)")
    axis.set_ylabel("who is busy")
    no_link = "" if "link" in lanes else "; no link row: nothing in flight between rounds"
    axis.set_title(
        f"Round timeline, first {max_rounds} rounds: {record['mode']} on {record['profile']} "
        f"({record['prompt_id']}){no_link}",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _in_flight_spans(spans: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """Per round, from the end of the edge's drafting of its block to the start of its verify."""
    drafted = {}
    for event in spans:
        if event["actor"] == "edge" and event["what"] in ("draft", "pre-draft"):
            drafted[event["round"]] = max(drafted.get(event["round"], 0.0), event["end_s"])
    flights = []
    for event in spans:
        if event["actor"] == "cloud" and event["what"] == "verify (server)" and event["round"] in drafted:
            if event["start_s"] > drafted[event["round"]]:
                flights.append((drafted[event["round"]], event["start_s"]))
    return flights


def render_sweep(summary: dict[str, Any]) -> str:
    """A sweep's capacity section: per profile, every point's serving figures and each mode's
    capacity at the SLO (the same table `edgespec simulate` writes)."""
    from edgespec.capacity import render_capacity_markdown

    parts = []
    for profile, table in summary["capacity"].items():
        figures = {int(n): f for n, f in table["points"].items()}
        where = (
            f"Profile `{profile}`; a fresh server per client count, each mode's clients start together after warm-up. "
            "Per-client tokens/s: each client's tokens over its generating time. "
            "Aggregate decode tokens/s: the tokens after "
            "each generation's first, over the union of the decode windows. "
            "Server busy share and s/token: the union of the "
            "passes the clients report (a batched pass counted once) over the wall time / the tokens."
        )
        parts.append(
            render_capacity_markdown(figures, table, table["slo_source"], where).replace(
                "## Capacity", f"## Capacity: {profile}", 1
            )
        )
    return "\n".join(parts)
