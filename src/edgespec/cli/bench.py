"""`edgespec bench`: parse options into a BenchConfig, run, write results, summary, report, plots."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from edgespec.bench.runner import ALL_MODES, BenchConfig, build_jobs, run_profile
from edgespec.bench.summary import summarize_all, summarize_sweep
from edgespec.cli.options import add_round_policy_arguments
from edgespec.cli.progress import progress
from edgespec.hostinfo import host_facts
from edgespec.models.presets import DEFAULT_DRAFT, DEFAULT_TARGET


def add_bench_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark every mode over emulated networks (separate processes)",
        description="Benchmark every mode on the same prompts: a pinned server, a link emulator and pinned edge "
        "clients as separate processes; writes results.jsonl, summary.json, report.md and plots to --out.",
    )
    parser.add_argument("--target", default=DEFAULT_TARGET)
    parser.add_argument("--draft", default=DEFAULT_DRAFT)
    parser.add_argument("--draft-backend", default="llamacpp", choices=["llamacpp", "transformers"])
    parser.add_argument("--exits", default="auto")
    parser.add_argument(
        "--engine",
        default="transformers",
        choices=["auto", "llamacpp", "transformers"],
        help="what runs the target on the server (`serve --engine`); cloud-ar runs on the same engine as every mode, "
        "and every row names it. llamacpp has no exits: use the guess-based modes (sd, sd-ee-predraft, "
        "sd-ee-pipelined) and --exits none",
    )
    parser.add_argument(
        "--fastest-cloud-ar",
        action="store_true",
        help="also run cloud-ar on a llama.cpp server (the fastest this host serves the GGUF target) and report it as "
        "a row of its own, with every mode's ratio against it (not with a --clients sweep)",
    )
    parser.add_argument("--modes", default=",".join(ALL_MODES))
    parser.add_argument("--profiles", default="wan", help="comma-separated: lan, wan, cellular")
    parser.add_argument(
        "--prompts",
        default="mtbench,humaneval",
        help="comma-separated: mtbench, humaneval (evaluation), sharegpt (held-out ShareGPT first turns, for tuning), "
        "FILE.jsonl",
    )
    parser.add_argument("--num-prompts", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument(
        "--adaptive-gamma",
        action="store_true",
        help="speculative modes choose each round's gamma from measured costs",
    )
    parser.add_argument("--max-gamma", type=int, default=8)
    add_round_policy_arguments(parser)
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    parser.add_argument(
        "--clients",
        default="1",
        help="concurrent edge clients per mode, one shared (batching) server, scored by aggregate tokens/s; "
        "a sweep N1,N2,... runs each count on a fresh server and reports capacity (the most clients whose p10 "
        "per-client tokens/s meets the SLO)",
    )
    parser.add_argument(
        "--slo-tokens-per-s",
        type=float,
        default=None,
        help="a sweep's SLO: per-client tokens/s (p10) each client must keep (default: half of single-client cloud-ar "
        "measured in the sweep)",
    )
    parser.add_argument(
        "--serve-args",
        default="",
        help="more `edgespec serve` options, passed unchanged, e.g. --serve-args='--max-batch 16'",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=0,
        metavar="N",
        help="serve with `edgespec serve --replicas N` (Ray Serve, unpinned) instead of one pinned server",
    )
    parser.add_argument("--gpu-usd-per-hour", type=float, default=2.50)
    parser.add_argument("--egress-usd-per-gb", type=float, default=0.09)
    parser.add_argument(
        "--check-oracle",
        action="store_true",
        help="after the timed runs, compare every output with fp32 `generate` of the target (loaded once here; cached "
        "in OUT/oracle.jsonl)",
    )
    parser.add_argument("--out", default="out/bench")
    parser.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from edgespec.bench.report import plot_speedups, plot_timeline, render_markdown, render_sweep
    from edgespec.capacity import plot_capacity
    from edgespec.models.loading import load_tokenizer

    config = bench_config(args)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = build_jobs(config, load_tokenizer(config.draft))
    records: list[dict[str, Any]] = []
    fastest: list[dict[str, Any]] = []  # --fastest-cloud-ar: cloud-ar on llama.cpp, a row of its own
    total = len(jobs) * len(config.profiles) * len(config.counts if config.client_counts else (1,))
    if config.fastest_cloud_ar and not config.client_counts:
        total += sum(1 for job in jobs if job["mode"] == "cloud-ar") * len(config.profiles)
    with progress(total=total, desc="generations", unit="gen") as bar:
        for profile in config.profiles:
            bar.set_postfix_str(profile)
            records += run_profile(config, profile, jobs, out, bar.update)
            if config.fastest_cloud_ar and not config.client_counts:
                from edgespec.bench.fastest_baseline import run_fastest_cloud_ar

                fastest += run_fastest_cloud_ar(config, profile, jobs, bar.update)
    command = "edgespec " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with (out / "results.jsonl").open("w") as sink:
        for record in records + fastest:
            sink.write(
                json.dumps({**record, "config": json.loads(json.dumps(config, default=lambda o: o.__dict__))}) + "\n",
            )
    if config.client_counts:
        summary = summarize_sweep(
            config,
            records,
            _oracle_by_count(config, jobs, records, out) if config.check_oracle else None,
        )
    else:
        oracle = None
        if config.check_oracle:
            from edgespec.bench.oracle_check import check_against_oracle

            print("checking every output against fp32 generate of the target (once per prompt)...", flush=True)
            oracle = check_against_oracle(config.target, config.max_new_tokens, jobs, records, out / "oracle.jsonl")
        summary = summarize_all(config, records, oracle)
        if fastest:
            from edgespec.bench.fastest_baseline import add_fastest_rows

            add_fastest_rows(summary, config, fastest)
    # Every figure names the machine it came from, and what it ran: server and clients one thread each.
    from edgespec.models.loading import resolve_dtype

    draft_dtype = "GGUF (llama.cpp)" if config.draft_backend == "llamacpp" else resolve_dtype(config.dtype)
    summary["host"] = host_facts(threads_per_process=1, dtype=summary["server_dtype"], draft_dtype=draft_dtype)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    report = render_markdown(summary, command)
    if config.client_counts:
        report += render_sweep(summary)
        for profile, table in summary["capacity"].items():
            figures = {int(n): f for n, f in table["points"].items()}
            plot_capacity(
                figures,
                table["slo_tokens_per_s"],
                f"measured: {config.target} ({summary['server_dtype']}), {profile}, {summary['host']['cpu']}",
                out / f"capacity-{profile}.png",
            )
    (out / "report.md").write_text(report)
    plot_speedups(summary, out / "speedup.png")
    timeline_source = next((r for r in records if r["mode"] == "sd-ee-pipelined" and "stats" in r), None)
    timeline_source = timeline_source or next(r for r in records if "stats" in r)
    plot_timeline(timeline_source, out / "timeline.png")
    print(report)
    capacity_plots = "".join(f", capacity-{p}.png" for p in summary.get("capacity", {}))
    print(f"wrote {out}/results.jsonl, summary.json, report.md, speedup.png, timeline.png{capacity_plots}")
    return 0


def bench_config(args: argparse.Namespace) -> BenchConfig:
    """The options of `bench` as the harness's config (stored with every result)."""
    from edgespec.bench.metrics import PriceModel

    split = lambda text: tuple(part.strip() for part in text.split(",") if part.strip())  # noqa: E731
    counts = parse_client_counts(args.clients)
    return BenchConfig(
        target=args.target,
        draft=args.draft,
        draft_backend=args.draft_backend,
        exits=args.exits,
        modes=split(args.modes),
        profiles=split(args.profiles),
        prompts=split(args.prompts),
        num_prompts=args.num_prompts,
        max_new_tokens=args.max_new_tokens,
        gamma=args.gamma,
        adaptive_gamma=args.adaptive_gamma,
        branches=args.branches,
        guess_verdict=not args.no_guess,
        runner_up=args.runner_up,
        draft_stop=args.draft_stop,
        early_verdicts=args.early_verdicts,
        max_gamma=args.max_gamma,
        dtype=args.dtype,
        clients=max(counts),
        client_counts=counts if len(counts) > 1 else (),
        slo_tokens_per_s=args.slo_tokens_per_s,
        serve_args=tuple(shlex.split(args.serve_args)),
        replicas=args.replicas,
        out=args.out,
        price=PriceModel(args.gpu_usd_per_hour, args.egress_usd_per_gb),
        check_oracle=args.check_oracle,
        engine=args.engine,
        fastest_cloud_ar=args.fastest_cloud_ar,
    )


def parse_client_counts(text: str) -> tuple[int, ...]:
    """``--clients``: one count, or a sweep of distinct counts (sorted)."""
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise SystemExit(f"--clients: a count or a comma-separated list of counts, got {text!r}") from None
    if not counts or min(counts) < 1 or len(set(counts)) != len(counts):
        raise SystemExit(f"--clients: distinct counts >= 1, got {text!r}")
    return tuple(sorted(counts))


def _oracle_by_count(
    config: BenchConfig, jobs: list[dict[str, Any]], records: list[dict[str, Any]], out: Path
) -> dict[int, Any]:
    """`--check-oracle` for a sweep: the fp32 target loaded once, each point checked apart."""
    from edgespec.bench.oracle_check import check_against_oracle
    from edgespec.models.loading import load_model
    from edgespec.prompting import eos_token_ids

    print("checking every output against fp32 generate of the target (once per prompt)...", flush=True)
    loaded = load_model(config.target, dtype="float32")
    eos = eos_token_ids(loaded.model, loaded.tokenizer)
    return {
        count: check_against_oracle(
            config.target,
            config.max_new_tokens,
            jobs,
            [r for r in records if r.get("sweep_clients") == count],
            out / "oracle.jsonl",
            loaded.model,
            eos,
        )
        for count in config.counts
    }
