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
prompt token (its attention and MLP output projections scaled by 1e-3 leave each position's
hidden state near its own embedding, and an LM head equal to the embedding then ranks that token first by a
margin of ~25 logits, so bf16 rounding cannot flip it; the head is given the embedding's values). The projections still run at full cost.

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
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from edgespec.drivers.trace import Trace, load_traces  # noqa: E402

OUTPUT_SCALE = 1e-3


def scripted_trace(trace: Trace, vocab: int) -> Trace:
    """``trace`` mapped onto the repeating target: same prompt, the target writes the last prompt
    token over and over, the draft agrees exactly where the real draft agreed. Prompt ids beyond a
    small test model's vocabulary are folded into it (their values do not change the time)."""
    trace = Trace(**{**trace.__dict__, "prompt_ids": [token % vocab for token in trace.prompt_ids]})
    repeated = trace.prompt_ids[-1]
    wrong = (repeated + 1) % vocab
    agreed = [d == c for d, c in zip(trace.draft_argmax, trace.continuation)] + [True]
    draft = [repeated if ok else wrong for ok in agreed[: len(trace.draft_argmax)]]
    return Trace(
        id=trace.id, prompt_set=trace.prompt_set, prompt_ids=list(trace.prompt_ids),
        continuation=[repeated] * len(trace.continuation), ended_in_eos=False, draft_argmax=draft,
        draft_topk_ids=[[d, wrong if d == repeated else repeated] for d in draft],
        draft_topk_probs=trace.draft_topk_probs, num_layers=trace.num_layers,
    )


class ScriptedDraft:
    """`DraftRuntime`'s interface over a trace (the simulator's `TraceEdge`): the blocks the real
    draft drafted, after the edge's drafting time."""

    def __init__(self, trace: Trace, edge_profile: Any, vocab: int) -> None:
        from edgespec.drivers.trace_backends import TraceEdge

        self.edge = TraceEdge(trace, edge_profile)  # the client passes its draft stop with every block
        self.vocab_size = vocab
        self.wrong = (trace.continuation[0] + 1) % vocab  # the id `scripted_trace` drafts where the real draft disagreed
        self.seconds = 0.0

    def reset(self) -> None:
        self.edge._cached = []

    def rollback(self, sequence: Sequence[int]) -> None:
        pass

    def draft(
        self, sequence: Sequence[int], gamma: int, params: Any, seed: int = 0, should_stop: Callable[[], bool] | None = None,
        candidates: bool = False, alternatives: bool = False, stop_below: float = 0.0, min_tokens: int = 1,
    ) -> Any:
        from edgespec.core.block import DraftBlock

        block, seconds = self.edge.draft(sequence, gamma, min_tokens, stop_below)
        per_token = seconds / len(block.tokens)
        tokens: list[int] = []
        for index, token in enumerate(block.tokens):
            if index > 0 and should_stop is not None and should_stop():
                break
            time.sleep(per_token)
            self.seconds += per_token
            tokens.append(token if token >= 0 else self.wrong)  # past a disagreement: any wrong id
        kept = len(tokens)
        return DraftBlock(tokens, confidence=block.confidence[:kept], runner_up=[self.wrong] * kept)


def build_target(config_dir: str, dtype: str, device: str) -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_dir)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype)).eval().requires_grad_(False)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(OUTPUT_SCALE)
            layer.mlp.down_proj.weight.mul_(OUTPUT_SCALE)
        # The real checkpoint's head is untied: give it the embedding's values (same cost).
        model.get_output_embeddings().weight.copy_(model.get_input_embeddings().weight)
    return model


def serve(args: argparse.Namespace, ports: Any, stop: Any, stats: Any) -> None:
    """The verifier, in its own process."""
    import torch

    from edgespec.models.target import ScoreRequest, TargetRuntime
    from edgespec.server.app import RunningServer, ServerConfig
    from edgespec.server.limits import AdmissionLimits
    from edgespec.server.servicer import VerifierService

    if args.server_threads:
        torch.set_num_threads(args.server_threads)
    if args.switch_interval_ms:
        # Torch releases the GIL around every op; with gRPC's threads waiting, the pass thread can wait a
        # whole switch interval (5 ms by default) to get it back.
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    runtime = TargetRuntime(build_target(args.config, args.dtype, args.device), None)
    # Warm the kernels of every batch shape a run can meet, so no pass pays a first-call cost.
    for size in sorted({1, 2, 4, 8, 16, 32, min(64, args.max_batch), args.max_batch}):
        for rows in (1, 5):
            requests = []
            for _ in range(size):
                kv = runtime.new_cache()
                runtime.score_tail(list(range(100, 164)), 1, kv=kv)
                requests.append(ScoreRequest(list(range(100, 164 + rows)), rows, kv))
            runtime.score_batch(requests)
    isolated = isolated_pass_ms(runtime, args.device)
    profiles: list[str] = []
    if args.profile_passes:
        profiles += profile_isolated_passes(runtime, args.device)
        profile_in_server_passes(runtime, args.device, args.profile_passes, profiles)
    prefill_chunk, max_batch_rows = AdmissionLimits.batch_budget(args.device, args.max_batch, args.prefill_chunk, None)
    admission = AdmissionLimits(
        max_sessions=max(64, 2 * args.clients), max_queued=max(256, 4 * args.clients), max_batch=args.max_batch,
        max_batch_rows=max(max_batch_rows, args.max_batch * 9), prefill_chunk=prefill_chunk,
    )
    service = VerifierService(runtime, tokenizer=None, eos_ids=frozenset(), admission=admission)
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


class GarbageCollections:
    """Python's garbage collections in this process while the clients ran, by generation and by
    thread: a collection runs in whichever thread allocates when a threshold is crossed, and
    walks every tracked object of the process (the sessions' and gRPC's too), so one in the
    compute thread's forward is time the pass pays."""

    def __init__(self) -> None:
        import gc
        import threading

        self._threading = threading
        self._started: dict[int, float] = {}
        self.records: list[tuple[str, int, float]] = []  # thread name, generation, ms
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        ident = self._threading.get_ident()
        if phase == "start":
            self._started[ident] = time.perf_counter()
        elif ident in self._started:
            ms = (time.perf_counter() - self._started.pop(ident)) * 1000
            self.records.append((self._threading.current_thread().name, info["generation"], ms))

    def stop(self) -> None:
        import gc

        gc.callbacks.remove(self._callback)

    def summary(self) -> dict[str, dict[str, list[float]]]:
        """{thread: {generation: [collections, total ms, longest ms]}}."""
        grouped: dict[str, dict[str, list[float]]] = {}
        for thread, generation, ms in self.records:
            entry = grouped.setdefault(thread, {}).setdefault(str(generation), [0, 0.0, 0.0])
            entry[0] += 1
            entry[1] = round(entry[1] + ms, 2)
            entry[2] = round(max(entry[2], ms), 2)
        return grouped


def isolated_pass_ms(runtime: Any, device: str) -> dict[str, list[float]]:
    """Median ms of a pass alone (sessions x rows, ragged contexts of 120-220 tokens), timed as the
    server times its passes, and the thread's CPU ms in it: to set beside ``in_server_pass_ms``."""
    import torch

    def synchronized() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    timed: dict[str, list[float]] = {}
    for size in (1, 8, 16, 32):
        for rows in (1, 5):
            requests = _requests(runtime, size, rows)
            samples, cpu = [], []
            for _ in range(7):
                synchronized()
                started, cpu_started = time.perf_counter(), time.thread_time()
                runtime.score_batch(requests)
                samples.append((time.perf_counter() - started) * 1000)
                cpu.append((time.thread_time() - cpu_started) * 1000)
            timed[f"{size}x{rows}"] = [round(statistics.median(samples), 2), round(statistics.median(cpu), 2)]
    synchronized()
    return timed


def _requests(runtime: Any, size: int, rows: int) -> list[Any]:
    """``size`` sessions with ragged contexts of 120-220 tokens, each asking to score ``rows`` rows."""
    from edgespec.models.target import ScoreRequest

    requests = []
    for index in range(size):
        kv = runtime.new_cache()
        sequence = [(7 * index + j) % 2000 + 1 for j in range(120 + (index * 37) % 100)]
        runtime.score_tail(sequence, 1, kv=kv)
        requests.append(ScoreRequest(sequence + [5] * rows, rows, kv, argmax_only=True))
    return requests


def _profiled(device: str, run: Callable[[], Any], title: str) -> str:
    """One call of ``run`` under torch's profiler: its wall and thread CPU ms, and where the time went."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started, cpu_started = time.perf_counter(), time.thread_time()
    with profile(activities=activities) as prof:
        run()
    wall, cpu = (time.perf_counter() - started) * 1000, (time.thread_time() - cpu_started) * 1000
    events = prof.key_averages()
    calls = sum(event.count for event in events)
    table = events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60)
    return f"## {title}: {wall:.1f} ms wall, {cpu:.1f} ms thread CPU (profiled), {calls} op calls\n{table}"


def profile_isolated_passes(runtime: Any, device: str) -> list[str]:
    """Passes of 8 and 32 sessions' verify blocks, alone, under the profiler."""
    tables = []
    for size in (8, 32):
        requests = _requests(runtime, size, 5)
        runtime.score_batch(requests)  # warm this exact shape
        requests = _requests(runtime, size, 5)
        tables.append(_profiled(device, lambda: runtime.score_batch(requests), f"alone: {size} sessions x 5 rows"))
    return tables


def profile_in_server_passes(runtime: Any, device: str, count: int, tables: list[str]) -> None:
    """Profile ``count`` of the server's passes of at least 4 sessions' rounds (no prefill chunk),
    from the 5th such pass on (the load has built up by then), on the server's own compute thread."""
    original = runtime.score_batch
    seen = 0

    def score_batch(requests: Any) -> Any:
        nonlocal seen
        rounds = len(requests) >= 4 and all(len(r.sequence) - len(r.kv.tokens) <= 9 for r in requests)
        if rounds:
            seen += 1
        if rounds and 5 <= seen < 5 + count:
            result: list[Any] = []
            tables.append(_profiled(device, lambda: result.extend(original(requests)), f"in the server: {len(requests)} sessions, pass {seen}"))
            return result
        return original(requests)

    runtime.score_batch = score_batch


def in_server_pass_ms(passes: Any) -> dict[str, list[float]]:
    """The server's passes without prefill, by sessions x widest row: [median ms, median thread CPU ms, passes]."""
    grouped: dict[tuple[int, int], list[Any]] = {}
    for one in passes:
        if one.prefill_rows == 0:
            grouped.setdefault((one.rows, one.padded_tokens // one.rows), []).append(one)
    return {
        f"{rows}x{width}": [
            round(statistics.median(p.forward_ms for p in group), 2), round(statistics.median(p.thread_cpu_ms for p in group), 2), len(group),
        ]
        for (rows, width), group in sorted(grouped.items()) if len(group) >= 3
    }


def relay(upstream: int, link: str, ports: Any, stop: Any) -> None:
    """The link emulator, in its own process."""
    from edgespec.link import PROFILES
    from edgespec.link.proxy import LinkEmulator

    emulator = LinkEmulator("127.0.0.1", upstream, PROFILES[link])
    ports.put(emulator.run_in_thread())
    stop.wait()
    emulator.stop_thread()


def clients(jobs: list[dict[str, Any]], address: str, args: argparse.Namespace, edge_path: str, start: Any, results: Any) -> None:
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
        config = GenerationConfig(max_new_tokens=job["max_new_tokens"], gamma=args.gamma, draft_stop=args.draft_stop, early_verdicts=False)
        started = time.perf_counter()
        result = await client.agenerate(trace.prompt_ids, mode, config)
        ended = time.perf_counter()
        return {
            "client_index": job["index"], "prompt_id": trace.id, "mode": mode.value, "tokens": result.tokens,
            "on_script": result.tokens == trace.continuation[: len(result.tokens)],
            "stats": result.stats.as_dict(with_timeline=False), "started_at": started, "ended_at": ended,
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
        context.Process(target=clients, args=(jobs[p :: args.processes], f"127.0.0.1:{link_port}", args, args.edge_profile, start, results))
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
        "mode": args.mode, "clients": args.clients, **figures,
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
        "--prefill-chunk", type=int, default=None, help="as `serve --prefill-chunk` (0: each prefill alone, whole; default: serve's for --device)"
    )
    parser.add_argument("--server-threads", type=int, default=0, help="the server's torch threads (0: torch's default, as `serve`)")
    parser.add_argument("--switch-interval-ms", type=float, default=0.0, help="the server process's GIL switch interval (0: Python's 5 ms)")
    parser.add_argument("--profile-passes", type=int, default=0, help="profile this many in-server passes (and passes alone): OUT-MODE-N-profile.txt")
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
            point_args = argparse.Namespace(**{**vars(args), "clients": count, "mode": mode, "processes": min(args.processes, count)})
            began = time.perf_counter()
            point = run_point(point_args, traces)
            point["run_s"] = time.perf_counter() - began
            points.append(point)
            print(json.dumps({k: v for k, v in point.items() if k != "server"}), flush=True)
            args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "points": points}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
