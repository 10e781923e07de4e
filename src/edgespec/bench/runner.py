"""`edgespec bench`: every mode over every profile in one run, server and client as separate
processes pinned to separate cores (one thread each), the link emulator between them."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgespec.bench.metrics import PriceModel, differences_from_cloud_ar, summarize
from edgespec.bench.processes import pin_to_core, deploy
from edgespec.data.prompt_sets import load_prompts
from edgespec.decoding.modes import Mode
from edgespec.models.loading import resolve_dtype
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
    early_verdicts: str = "auto"
    max_gamma: int = 8
    dtype: str = "auto"
    # Concurrent edge clients sharing one server: each mode is run by this many clients at once
    # and scored by aggregate tokens/s (the server batches their rounds).
    clients: int = 1
    # >0: the server is `edgespec serve --replicas N` (Ray Serve) instead of one process.
    replicas: int = 0
    out: str = "out/bench"
    price: PriceModel = field(default_factory=PriceModel)
    # Compare every output with fp32 `generate` of the target (loaded once, after the timed runs).
    check_oracle: bool = False

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


def build_jobs(config: BenchConfig, tokenizer: Any) -> list[dict[str, Any]]:
    jobs = []
    for prompt_set in config.prompts:
        for record in load_prompts(prompt_set, config.num_prompts):
            prompt_ids = render_prompt(tokenizer, record.text if not record.is_chat else record.messages, raw=not record.is_chat)
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
    jobs_file, results_file = out / f"jobs-{profile}.jsonl", out / f"raw-{profile}.jsonl"
    jobs_file.write_text("".join(json.dumps(j) + "\n" for j in warmup_jobs(jobs, config.modes) + jobs))
    results_file.unlink(missing_ok=True)
    with deploy(config.target, config.dtype, profile, exits=config.exits, log_dir=str(out / f"logs-{profile}"), replicas=config.replicas,
                cloud_draft=config.draft if any(Mode.parse(m).server_drafts for m in config.modes) else None) as deployment:
        if config.clients == 1:
            _run_workers([jobs_file], [results_file], config, deployment.client_port, out / f"logs-{profile}", progress)
        else:
            results_file.touch()
            for mode in config.modes:
                _run_concurrent(config, Mode.parse(mode).value, jobs, results_file, deployment.client_port, out / f"logs-{profile}", progress)
    records = [json.loads(line) for line in results_file.read_text().splitlines() if line.strip()]
    for record in records:
        record["profile"] = profile
    return records


def _worker_command(config: BenchConfig, port: int, jobs_file: Path, results_file: Path) -> list[str]:
    return [
        sys.executable, "-m", "edgespec.bench.client_worker", str(jobs_file), str(results_file),
        "--address", f"127.0.0.1:{port}", "--draft", config.draft,
        "--draft-backend", config.draft_backend, "--dtype", config.dtype,
    ]


def _run_workers(
    jobs_files: list[Path], results_files: list[Path], config: BenchConfig, port: int, log_dir: Path,
    progress: Callable[[int], None], barrier: Path | None = None,
) -> None:
    """Client worker processes on the edge core; with ``barrier``, all start measuring together."""
    workers = []
    for index, (jobs_file, results_file) in enumerate(zip(jobs_files, results_files)):
        command = _worker_command(config, port, jobs_file, results_file)
        if barrier is not None:
            command += ["--ready", str(barrier.with_name(f"{barrier.name}.ready{index}")), "--go", str(barrier)]
        log = open(log_dir / (f"client-{jobs_file.stem.removeprefix('jobs-')}.log" if barrier is not None else "client.log"), "w")
        workers.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pin_to_core(1)), log))
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
    config: BenchConfig, mode: str, jobs: list[dict[str, Any]], results_file: Path, port: int, log_dir: Path,
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


def aggregate_tokens_per_s(records: list[dict[str, Any]]) -> float:
    """Every client's tokens over the wall time from the first start to the last finish."""
    timed = [r for r in records if "started_at" in r and "tokens" in r]
    if not timed:
        return 0.0
    wall = max(r["ended_at"] for r in timed) - min(r["started_at"] for r in timed)
    return sum(len(r["tokens"]) for r in timed) / wall if wall > 0 else 0.0


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.exists() else 0


def _at(differing: list[tuple[str, int]]) -> list[str]:
    return [f"{prompt_id}@{position}" for prompt_id, position in differing]


def summarize_all(config: BenchConfig, records: list[dict[str, Any]], oracle: dict[tuple[str, str], list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """``oracle``: what `--check-oracle` found, (profile, mode) -> the outputs that differ from
    fp32 `generate`, each with its first differing position and the fp32 top-two margin there."""
    self_consistency = differences_from_cloud_ar(records)
    profiles: dict[str, dict[str, Any]] = {}
    for profile in config.profiles:
        per_mode: dict[str, Any] = {}
        for mode in config.modes:
            name = Mode.parse(mode).value
            chosen = [r for r in records if r["profile"] == profile and r["mode"] == name]
            summary = summarize(chosen, profile, config.price)
            summary["errors"] = sum(1 for r in chosen if "error" in r)
            if name not in ("cloud-ar", "edge-only"):
                differing = self_consistency.get((profile, name), [])
                summary["differs_from_cloud_ar"] = len(differing)
                summary["differs_from_cloud_ar_at"] = _at(differing)
            if oracle is not None:
                found = oracle.get((profile, name), [])
                summary["oracle_mismatches"] = len(found)
                summary["oracle_mismatch_at"] = [f"{d['prompt_id']}@{d['position']} (fp32 margin {d['fp32_margin']:.3f})" for d in found]
            if config.clients > 1:
                summary["clients"] = config.clients
                summary["aggregate_tokens_per_s"] = aggregate_tokens_per_s(chosen)
            per_mode[name] = summary
        # With concurrent clients the server's throughput is what is compared: aggregate tokens/s.
        rate = "aggregate_tokens_per_s" if config.clients > 1 else "tokens_per_s"
        baseline = per_mode.get("cloud-ar", {}).get(rate) or 0.0
        for summary in per_mode.values():
            summary["speedup_vs_cloud_ar"] = summary.get(rate, 0.0) / baseline if baseline else 0.0
        profiles[profile] = per_mode
    return {"config": asdict(config), "server_dtype": resolve_dtype(config.dtype), "profiles": profiles}
