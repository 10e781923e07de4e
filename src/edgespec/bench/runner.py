"""`edgespec bench`: every mode over every profile in one run, server and client as separate
processes pinned to separate cores (one thread each), the link emulator between them.
The records it collects are summarized in `edgespec.bench.summary`."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from edgespec.bench.metrics import PriceModel
from edgespec.bench.processes import deploy, pin_to_core
from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.data.prompt_sets import load_prompts
from edgespec.prompting import render_prompt

logger = logging.getLogger(__name__)

ALL_MODES = ("cloud-ar", "edge-only", "sd", "sd-ee", "sd-ee-predraft", "sd-ee-pipelined", "cloud-sd")


@dataclass(frozen=True)
class BenchConfig:
    target: str = "qwen2.5-coder-1.5b"
    draft: str = "qwen2.5-coder-0.5b"
    draft_backend: str = "llamacpp"
    exits: str = "auto"
    modes: tuple[str, ...] = ALL_MODES
    profiles: tuple[str, ...] = ("wan",)
    prompts: tuple[str, ...] = ("mtbench", "humaneval")
    num_prompts: int = 10
    max_new_tokens: int = 128
    gamma: int = 4
    adaptive_gamma: bool = False
    branches: int = 2
    guess_verdict: bool = True
    runner_up: bool = GenerationConfig.runner_up
    draft_stop: float = GenerationConfig.draft_stop
    early_verdicts: str = "auto"
    max_gamma: int = 8
    dtype: str = "auto"
    # Concurrent edge clients sharing one server: each mode is run by this many clients at once
    # and scored by aggregate tokens/s (the server batches their rounds).
    clients: int = 1
    # A sweep (`--clients 1,2,4,8`): each count in turn, a fresh server per count; ``clients``
    # is then the largest. Empty: one count, ``clients``.
    client_counts: tuple[int, ...] = ()
    # The SLO capacity is judged at (per-client tokens/s, p10); None: half of single-client
    # cloud-ar measured in the same sweep.
    slo_tokens_per_s: float | None = None
    # Passed to `edgespec serve` unchanged (e.g. scheduler options).
    serve_args: tuple[str, ...] = ()
    # >0: the server is `edgespec serve --replicas N` (Ray Serve) instead of one process.
    replicas: int = 0
    out: str = "out/bench"
    price: PriceModel = field(default_factory=PriceModel)
    # Compare every output with fp32 `generate` of the target (loaded once, after the timed runs).
    check_oracle: bool = False
    # What runs the target (`serve --engine`): every mode, cloud-ar included, runs on this one
    # server, and every record names the engine it resolved to.
    engine: str = "transformers"
    # Also run cloud-ar on llama.cpp (the fastest this host serves a GGUF target) as a row of its own.
    fastest_cloud_ar: bool = False

    def __post_init__(self) -> None:
        for mode in self.modes:
            Mode.parse(mode)
        if "cloud-ar" not in self.modes:
            raise ValueError("the benchmark needs cloud-ar in --modes: every speedup is measured against it")
        if self.replicas < 0:
            raise ValueError(f"--replicas must be >= 0, got {self.replicas}")
        if self.clients < 1:
            raise ValueError("--clients must be >= 1")
        if self.clients > 1 and self.num_prompts * len(self.prompts) < self.clients:
            raise ValueError(f"{self.clients} clients need at least as many prompts; raise --num-prompts")
        if self.client_counts:
            if min(self.client_counts) < 1 or len(set(self.client_counts)) != len(self.client_counts):
                raise ValueError(f"--clients: distinct counts >= 1, got {','.join(map(str, self.client_counts))}")
            if self.clients != max(self.client_counts):
                raise ValueError("a sweep's clients must be its largest count")
            if self.slo_tokens_per_s is None and (1 not in self.client_counts or "cloud-ar" not in self.modes):
                raise ValueError(
                    "the default SLO is half of single-client cloud-ar measured in the sweep: include 1 in --clients, "
                    "or give --slo-tokens-per-s"
                )
        if self.engine != "transformers" and served_engine(self) == "llamacpp":
            needing = [
                m
                for m in self.modes
                if Mode.parse(m).uses_exits and (Mode.parse(m).value == "sd-ee" or not self.guess_verdict)
            ]
            if needing:
                raise ValueError(f"the llama.cpp engine has no exits: {', '.join(needing)} cannot run on it")
        if self.slo_tokens_per_s is not None and not self.slo_tokens_per_s > 0:
            raise ValueError(f"--slo-tokens-per-s must be > 0, got {self.slo_tokens_per_s}")

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(sorted(self.client_counts)) or (self.clients,)

    def at(self, clients: int) -> "BenchConfig":
        """One point of a sweep, as a run with that many clients would be configured."""
        return replace(self, clients=clients, client_counts=())


def build_jobs(config: BenchConfig, tokenizer: Any) -> list[dict[str, Any]]:
    jobs = []
    for prompt_set in config.prompts:
        for record in load_prompts(prompt_set, config.num_prompts):
            prompt_ids = render_prompt(
                tokenizer, record.text if not record.is_chat else record.messages, raw=not record.is_chat
            )
            # Modes interleaved per prompt, so slow drifts of the machine hit every mode alike.
            for mode in config.modes:
                jobs.append(
                    {
                        "prompt_set": prompt_set,
                        "prompt_id": record.id,
                        "mode": Mode.parse(mode).value,
                        "prompt_ids": prompt_ids,
                        "prompt_tokens": len(prompt_ids),
                        "max_new_tokens": config.max_new_tokens,
                        "gamma": config.gamma,
                        "adaptive_gamma": config.adaptive_gamma,
                        "branches": config.branches,
                        "guess_verdict": config.guess_verdict,
                        "runner_up": config.runner_up,
                        "draft_stop": config.draft_stop,
                        "early_verdicts": config.early_verdicts,
                        "max_gamma": config.max_gamma,
                        **{f"extra_{k}": v for k, v in record.extra.items()},
                    }
                )
    return jobs


def warmup_jobs(jobs: list[dict[str, Any]], modes: tuple[str, ...]) -> list[dict[str, Any]]:
    first = jobs[0]
    return [dict(first, mode=Mode.parse(m).value, max_new_tokens=8, warmup=True) for m in modes]


def run_profile(
    config: BenchConfig, profile: str, jobs: list[dict[str, Any]], out: Path, progress: Callable[[int], None]
) -> list[dict[str, Any]]:
    """Every mode on ``profile``; with a sweep, every client count in turn, each on a fresh
    server (nothing cached or queued carries over from the previous point). Records of a sweep
    carry ``sweep_clients``."""
    if config.client_counts:
        records: list[dict[str, Any]] = []
        for count in config.counts:
            point = config.at(count)
            log_dir = out / f"logs-{profile}" / f"clients-{count}"
            results_file = log_dir / "raw.jsonl"
            with _deployed(config, profile, log_dir) as deployment:
                results_file.unlink(missing_ok=True)
                results_file.touch()
                for mode in config.modes:
                    _run_concurrent(
                        point, Mode.parse(mode).value, jobs, results_file, deployment.client_port, log_dir, progress
                    )
            records += [dict(r, sweep_clients=count) for r in _read(results_file)]
    else:
        jobs_file, results_file = out / f"jobs-{profile}.jsonl", out / f"raw-{profile}.jsonl"
        jobs_file.write_text("".join(json.dumps(j) + "\n" for j in warmup_jobs(jobs, config.modes) + jobs))
        results_file.unlink(missing_ok=True)
        with _deployed(config, profile, out / f"logs-{profile}") as deployment:
            if config.clients == 1:
                _run_workers(
                    [jobs_file], [results_file], config, deployment.client_port, out / f"logs-{profile}", progress
                )
            else:
                results_file.touch()
                for mode in config.modes:
                    _run_concurrent(
                        config,
                        Mode.parse(mode).value,
                        jobs,
                        results_file,
                        deployment.client_port,
                        out / f"logs-{profile}",
                        progress,
                    )
        records = _read(results_file)
    engine = served_engine(config)
    for record in records:
        record["profile"] = profile
        record["engine"] = engine
    return records


def served_engine(config: BenchConfig) -> str:
    """The engine `serve --engine` resolves to for this benchmark's target, on the CPU."""
    from edgespec.engines.selection import choose_engine

    return choose_engine(config.engine, config.target, "cpu", config.exits)


def _deployed(config: BenchConfig, profile: str, log_dir: Path) -> Any:
    return deploy(
        config.target,
        config.dtype,
        profile,
        exits=config.exits,
        log_dir=str(log_dir),
        replicas=config.replicas,
        cloud_draft=config.draft if any(Mode.parse(m).server_drafts for m in config.modes) else None,
        serve_args=("--engine", config.engine, *config.serve_args),
    )


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def edge_cores(cores: int | None = None) -> list[int]:
    """The cores edge clients run on: every core but the server's (core 0); none to pin to on a
    one-core machine."""
    cores = (os.cpu_count() or 1) if cores is None else cores
    return list(range(1, cores))


def client_core(index: int, cores: int | None = None) -> int | None:
    """Client ``index``'s core: its own while there are enough, else shared round-robin."""
    edge = edge_cores(cores)
    return edge[index % len(edge)] if edge else None


def core_layout(clients: int, cores: int | None = None) -> dict[str, Any]:
    """Where the processes of one point ran: for the report (clients share cores when fewer
    edge cores than clients)."""
    edge = edge_cores(cores)
    used = sorted({client_core(i, cores) for i in range(clients)} - {None})
    return {
        "server_core": 0 if edge else None,
        "edge_cores": used,
        "clients_per_edge_core": -(-clients // len(edge)) if edge else clients,
        "clients_share_cores": bool(edge) and clients > len(edge),
    }


def _worker_command(config: BenchConfig, port: int, jobs_file: Path, results_file: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "edgespec.bench.client_worker",
        str(jobs_file),
        str(results_file),
        "--address",
        f"127.0.0.1:{port}",
        "--draft",
        config.draft,
        "--draft-backend",
        config.draft_backend,
        "--dtype",
        config.dtype,
    ]


def _run_workers(
    jobs_files: list[Path],
    results_files: list[Path],
    config: BenchConfig,
    port: int,
    log_dir: Path,
    progress: Callable[[int], None],
    barrier: Path | None = None,
) -> None:
    """Client worker processes on the edge core; with ``barrier``, all start measuring together."""
    workers = []
    for index, (jobs_file, results_file) in enumerate(zip(jobs_files, results_files)):
        command = _worker_command(config, port, jobs_file, results_file)
        if barrier is not None:
            command += ["--ready", str(barrier.with_name(f"{barrier.name}.ready{index}")), "--go", str(barrier)]
        log = open(
            log_dir / (f"client-{jobs_file.stem.removeprefix('jobs-')}.log" if barrier is not None else "client.log"),
            "w",
        )
        # Edge clients each on a core of their own where the machine has enough (never the
        # server's core 0); otherwise they share the edge cores round-robin.
        core = client_core(index) if barrier is not None else client_core(0)
        workers.append(
            (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pin_to_core(core)), log)
        )
    done = 0
    while any(worker.poll() is None for worker, _ in workers):
        time.sleep(0.5)
        if barrier is not None and not barrier.exists():
            if all(barrier.with_name(f"{barrier.name}.ready{i}").exists() for i in range(len(workers))):
                barrier.touch()
        now = sum(_count_lines(f) for f in results_files)
        if now > done:
            progress(now - done)
            done = now
    for worker, log in workers:
        log.close()
        if worker.returncode != 0:
            raise RuntimeError(f"a benchmark client failed (exit {worker.returncode}); see {log.name}")
    progress(sum(_count_lines(f) for f in results_files) - done)


def _run_concurrent(
    config: BenchConfig,
    mode: str,
    jobs: list[dict[str, Any]],
    results_file: Path,
    port: int,
    log_dir: Path,
    progress: Callable[[int], None],
) -> None:
    """``config.clients`` clients run this mode's prompts at once, dealt out round-robin."""
    mode_jobs = [dict(j, clients=config.clients) for j in jobs if j["mode"] == mode]
    jobs_files, results_files = [], []
    for index in range(config.clients):
        share = mode_jobs[index :: config.clients]
        jobs_file = log_dir / f"jobs-{mode}-{index}.jsonl"
        jobs_file.write_text("".join(json.dumps(j) + "\n" for j in warmup_jobs(share, (mode,)) + share))
        jobs_files.append(jobs_file)
        results_files.append(log_dir / f"raw-{mode}-{index}.jsonl")
        results_files[-1].unlink(missing_ok=True)
    barrier = log_dir / f"go-{mode}"
    for stale in log_dir.glob(f"go-{mode}*"):
        stale.unlink()
    _run_workers(jobs_files, results_files, config, port, log_dir, progress, barrier)
    with results_file.open("a") as sink:
        for index, path in enumerate(results_files):
            for line in path.read_text().splitlines():
                if line.strip():
                    sink.write(json.dumps(dict(json.loads(line), client_index=index)) + "\n")


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.exists() else 0
