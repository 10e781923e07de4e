"""One point of the capacity projection, run for real: the gRPC verifier on an accelerator
serving N edge sessions at once through the link emulator, timed as `edgespec bench` times a
sweep point, for comparison with `edgespec simulate` on the same traces and costs.

What is real: the server (edgespec's scheduler, batched forwards of the target's real shapes on
the accelerator, gRPC), the link emulator, N concurrent `EdgeClient`s over real sockets.
What is not: the weights are random (time depends on the shapes, not the values; no weights can
travel to the device machine), and the edge devices are emulated. Each client's draft replays a
recorded trace of the real pair (`edgespec trace`): where the real draft agreed with the real
target the scripted draft proposes the target's token, where it did not it proposes a wrong one,
and it takes the edge's drafting time from a cost profile (it sleeps: the edge is another device).
So every round accepts what the real pair's round accepted, as in the simulator.

For the scripted draft to know the target's token, the random target is made to repeat the last
prompt token (`edgespec.sim.scripted` says how); the projections still run at full cost.

    python scripts/gpu_capacity_check.py --config CONFIG_DIR --traces out/traces-bench \
        --edge-profile HOST_PROFILE.json --clients 64 --modes cloud-ar,sd --out result.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from edgespec.drivers.trace import Trace, load_traces  # noqa: E402
from edgespec.sim.pass_diagnostics import (  # noqa: E402
    GarbageCollections,
    in_server_pass_ms,
    isolated_pass_ms,
    profile_in_server_passes,
    profile_isolated_passes,
)
from edgespec.sim.scripted import ScriptedDraft, repeating_target, scripted_trace  # noqa: E402


def serve(args: argparse.Namespace, ports: Any, stop: Any, stats: Any) -> None:
    """The verifier, in its own process."""
    import torch

    from edgespec.models.target import ScoreRequest
    from edgespec.server.app import RunningServer, ServerConfig
    from edgespec.server.limits import AdmissionLimits
    from edgespec.server.servicer import VerifierService

    if args.server_threads:
        torch.set_num_threads(args.server_threads)
    if args.switch_interval_ms:
        # Torch releases the GIL around every op; with gRPC's threads waiting, the pass thread can wait a
        # whole switch interval (5 ms by default) to get it back.
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    runtime = target_engine(args)
    # Warm the kernels of every batch shape a run can meet, so no pass pays a first-call cost.
    for size in sorted({1, 2, 4, 8, 16, 32, min(64, args.max_batch), args.max_batch}):
        for rows in (1, 5):
            requests = []
            for _ in range(size):
                kv = runtime.new_cache()
                runtime.score_tail(list(range(100, 164)), 1, kv=kv)
                requests.append(ScoreRequest(list(range(100, 164 + rows)), rows, kv))
            runtime.score_batch(requests)
    del requests, kv  # the warm-up's sessions end here (the paged engine's pool wants them back)
    isolated = isolated_pass_ms(runtime, args.device)
    profiles: list[str] = []
    if args.profile_passes:
        profiles += profile_isolated_passes(runtime, args.device)
        profile_in_server_passes(runtime, args.device, args.profile_passes, profiles)
    prefill_chunk, max_batch_rows = AdmissionLimits.batch_budget(args.device, args.max_batch, args.prefill_chunk, None)
    admission = AdmissionLimits(
        max_sessions=max(64, 2 * args.clients),
        max_queued=max(256, 4 * args.clients),
        max_batch=args.max_batch,
        max_batch_rows=max(max_batch_rows, args.max_batch * 9),
        prefill_chunk=prefill_chunk,
    )
    cloud_draft = None
    if args.cloud_draft_config:
        from edgespec.server.cloud_draft import CloudDraft

        draft_model = repeating_target(args.cloud_draft_config, args.dtype, args.device)
        cloud_draft = CloudDraft(draft_model, max_batch=args.max_batch)
    service = VerifierService(
        runtime, tokenizer=None, eos_ids=frozenset(), admission=admission, cloud_draft=cloud_draft
    )
    server = RunningServer(service, ServerConfig(port=0, admission=admission))
    service.scheduler.stats = type(service.scheduler.stats)()  # the warm-up is not the run
    collections = GarbageCollections()
    ports.put(server.port)
    wall, cpu = time.perf_counter(), time.process_time()
    stop.wait()
    collections.stop()
    summary = service.scheduler.stats.summary()
    summary["garbage_collections"] = collections.summary()
    # Cores the whole server process kept busy (gRPC's threads and the event loop beside the passes).
    summary["process_cores_busy"] = round((time.process_time() - cpu) / (time.perf_counter() - wall), 2)
    summary["isolated_pass_ms"] = isolated
    # The same passes alone again, now that the clients are gone: still slow, the server's state
    # (its allocator, its objects) is the cause; fast again, the load beside the passes was.
    runtime.__dict__.pop("score_batch", None)  # no longer profiled
    summary["isolated_after_pass_ms"] = isolated_pass_ms(runtime, args.device)
    summary["in_server_pass_ms"] = in_server_pass_ms(service.scheduler.stats.recent)
    if profiles:
        path = args.out.with_name(f"{args.out.stem}-{args.mode}-{args.clients}-profile.txt")
        path.write_text("\n\n".join(profiles) + "\n")
    server.stop(grace=1.0)
    stats.put(summary)


def target_engine(args: argparse.Namespace) -> Any:
    """The repeating random-weight target on the engine asked for: eager transformers, or the paged
    engine (one KV pool, packed passes, captured graphs unless --no-cuda-graphs)."""
    model = repeating_target(args.config, args.dtype, args.device)
    if args.engine == "paged":
        from edgespec.engines.paged import PagedEngine, PoolSettings

        # Every client, the warm-up's and the diagnostics' sessions (two batches' worth alive at once while
        # the next is built) and the engine's own.
        sessions = args.clients + 3 * max(32, args.max_batch) + 2
        settings = PoolSettings(sessions=sessions, session_tokens=args.session_context)
        return PagedEngine(model, settings, cuda_graphs=not args.no_cuda_graphs)
    from edgespec.models.target import TargetRuntime

    return TargetRuntime(model, None)


def relay(upstream: int, link: str, ports: Any, stop: Any) -> None:
    """The link emulator, in its own process."""
    from edgespec.link import PROFILES
    from edgespec.link.proxy import LinkEmulator

    emulator = LinkEmulator("127.0.0.1", upstream, PROFILES[link])
    ports.put(emulator.run_in_thread())
    stop.wait()
    emulator.stop_thread()


def clients(
    jobs: list[dict[str, Any]], address: str, args: argparse.Namespace, edge_path: str, start: Any, results: Any
) -> None:
    """Some of the edge clients, in one process, started together with every other process's."""
    from edgespec.client.edge_client import EdgeClient
    from edgespec.core.config import GenerationConfig
    from edgespec.core.modes import Mode
    from edgespec.drivers.cost_profile import HardwareProfile

    edge_profile = HardwareProfile.load(edge_path)

    async def one(job: dict[str, Any]) -> dict[str, Any]:
        trace = Trace.from_json(job["trace"])
        mode = Mode.parse(args.mode)
        draft = ScriptedDraft(trace, edge_profile, args.vocab) if mode.uses_draft else None
        client = EdgeClient(address, draft)  # type: ignore[arg-type]
        config = GenerationConfig(
            max_new_tokens=job["max_new_tokens"], gamma=args.gamma, draft_stop=args.draft_stop, early_verdicts=False
        )
        started = time.perf_counter()
        result = await client.agenerate(trace.prompt_ids, mode, config)
        ended = time.perf_counter()
        return {
            "client_index": job["index"],
            "prompt_id": trace.id,
            "mode": mode.value,
            "tokens": result.tokens,
            "on_script": result.tokens == trace.continuation[: len(result.tokens)],
            "stats": result.stats.as_dict(with_timeline=False),
            "started_at": started,
            "ended_at": ended,
            "edge_draft_s": draft.seconds if draft else 0.0,
        }

    async def all_of_them() -> list[dict[str, Any]]:
        return await asyncio.gather(*(one(job) for job in jobs))

    start.wait()
    results.put(asyncio.run(all_of_them()))


def run_point(args: argparse.Namespace, traces: list[Trace]) -> dict[str, Any]:
    from edgespec.capacity import point_metrics

    context = mp.get_context("spawn")
    ports, stats, results = context.Queue(), context.Queue(), context.Queue()
    stop_server, stop_link = context.Event(), context.Event()
    server = context.Process(target=serve, args=(args, ports, stop_server, stats))
    server.start()
    server_port = ports.get(timeout=600)
    link = context.Process(target=relay, args=(server_port, args.link, ports, stop_link))
    link.start()
    link_port = ports.get(timeout=60)
    chosen = [traces[i % len(traces)] for i in range(args.clients)]  # as the simulator assigns them
    jobs = [
        {"index": i, "trace": t.to_json(), "max_new_tokens": min(args.max_new_tokens, len(t.continuation))}
        for i, t in enumerate(chosen)
    ]
    start = context.Barrier(args.processes + 1)
    workers = [
        context.Process(
            target=clients,
            args=(jobs[p :: args.processes], f"127.0.0.1:{link_port}", args, args.edge_profile, start, results),
        )
        for p in range(args.processes)
    ]
    for worker in workers:
        worker.start()
    start.wait(timeout=600)
    records = [r for _ in workers for r in results.get(timeout=args.timeout_s)]
    for worker in workers:
        worker.join()
    stop_link.set()
    stop_server.set()
    server_stats = stats.get(timeout=60)
    link.join()
    server.join()
    figures = point_metrics(records, server_stats["busy_s"])
    return {
        "mode": args.mode,
        "clients": args.clients,
        **figures,
        "off_script_sessions": sum(not r["on_script"] for r in records),
        "tokens_per_round": statistics.mean(r["stats"]["tokens_per_round"] for r in records),
        "rounds": sum(r["stats"]["rounds"] for r in records),
        "server": server_stats,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="directory holding the target's config.json")
    parser.add_argument("--traces", required=True, help="`edgespec trace` output of the real pair")
    parser.add_argument("--edge-profile", required=True, help="a hardware profile JSON: its draft costs are the edge's")
    parser.add_argument("--clients", default="64", help="client counts, e.g. 64 or 32,64")
    parser.add_argument("--modes", default="cloud-ar,sd")
    parser.add_argument("--link", default="wan")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--draft-stop", type=float, default=0.4)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument(
        "--prefill-chunk",
        type=int,
        default=None,
        help="as `serve --prefill-chunk` (0: each prefill alone, whole; default: serve's for --device)",
    )
    parser.add_argument(
        "--server-threads", type=int, default=0, help="the server's torch threads (0: torch's default, as `serve`)"
    )
    parser.add_argument(
        "--switch-interval-ms",
        type=float,
        default=0.0,
        help="the server process's GIL switch interval (0: Python's 5 ms)",
    )
    parser.add_argument(
        "--profile-passes",
        type=int,
        default=0,
        help="profile this many in-server passes (and passes alone): OUT-MODE-N-profile.txt",
    )
    parser.add_argument("--engine", choices=("transformers", "paged"), default="transformers")
    parser.add_argument("--session-context", type=int, default=1536, help="paged engine: tokens a session may hold")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="paged engine: every pass eager")
    parser.add_argument(
        "--cloud-draft-config",
        help="directory holding the draft's config.json: serve cloud-sd with a random-weight draft in its shapes "
        "(repeating like the target: it agrees with every token, cloud-sd's best case)",
    )
    parser.add_argument("--processes", type=int, default=8, help="client processes (the clients are spread over them)")
    parser.add_argument("--timeout-s", type=float, default=300)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from transformers import AutoConfig

    args.vocab = int(AutoConfig.from_pretrained(args.config).vocab_size)
    traces = [scripted_trace(t, args.vocab) for t in load_traces(args.traces)]
    points = []
    for count in (int(c) for c in args.clients.split(",")):
        for mode in args.modes.split(","):
            chosen = {"clients": count, "mode": mode, "processes": min(args.processes, count)}
            point_args = argparse.Namespace(**{**vars(args), **chosen})
            began = time.perf_counter()
            point = run_point(point_args, traces)
            point["run_s"] = time.perf_counter() - began
            points.append(point)
            print(json.dumps({k: v for k, v in point.items() if k != "server"}), flush=True)
            written = {"args": {k: str(v) for k, v in vars(args).items()}, "points": points}
            args.out.write_text(json.dumps(written, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
