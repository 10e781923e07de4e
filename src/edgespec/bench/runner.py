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

from edgespec.bench.metrics import PriceModel, count_mismatches, summarize
from edgespec.bench.processes import pin_to_core, deploy
from edgespec.data.prompt_sets import PromptRecord, load_prompts
from edgespec.decoding.modes import Mode
from edgespec.prompting import render_prompt

logger = logging.getLogger(__name__)

ALL_MODES = ("cloud-ar", "edge-only", "sd", "sd-ee", "sd-ee-predraft", "sd-ee-pipelined")


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
    dtype: str = "auto"
    out: str = "out/bench"
    price: PriceModel = field(default_factory=PriceModel)

    def __post_init__(self) -> None:
        for mode in self.modes:
            Mode.parse(mode)
        if "cloud-ar" not in self.modes:
            raise ValueError("the benchmark needs cloud-ar in --modes: every speedup is measured against it")


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
    with deploy(config.target, config.dtype, profile, exits=config.exits, log_dir=str(out / f"logs-{profile}")) as deployment:
        command = [
            sys.executable, "-m", "edgespec.bench.client_worker", str(jobs_file), str(results_file),
            "--address", f"127.0.0.1:{deployment.client_port}", "--draft", config.draft,
            "--draft-backend", config.draft_backend, "--dtype", config.dtype,
        ]
        with open(out / f"logs-{profile}" / "client.log", "w") as log:
            worker = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pin_to_core(1))
            done = 0
            while worker.poll() is None:
                time.sleep(1.0)
                now = _count_lines(results_file)
                if now > done:
                    progress(now - done)
                    done = now
        if worker.returncode != 0:
            raise RuntimeError(f"the benchmark client failed (exit {worker.returncode}); see {out / f'logs-{profile}' / 'client.log'}")
        progress(_count_lines(results_file) - done)
    records = [json.loads(line) for line in results_file.read_text().splitlines() if line.strip()]
    for record in records:
        record["profile"] = profile
    return records


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.exists() else 0


def summarize_all(config: BenchConfig, records: list[dict[str, Any]]) -> dict[str, Any]:
    mismatches = count_mismatches(records)
    profiles: dict[str, dict[str, Any]] = {}
    for profile in config.profiles:
        per_mode: dict[str, Any] = {}
        for mode in config.modes:
            name = Mode.parse(mode).value
            chosen = [r for r in records if r["profile"] == profile and r["mode"] == name]
            summary = summarize(chosen, profile, config.price)
            summary["errors"] = sum(1 for r in chosen if "error" in r)
            summary["mismatches"] = mismatches.get((profile, name), 0)
            per_mode[name] = summary
        baseline = per_mode.get("cloud-ar", {}).get("tokens_per_s") or 0.0
        for summary in per_mode.values():
            summary["speedup_vs_cloud_ar"] = summary.get("tokens_per_s", 0.0) / baseline if baseline else 0.0
        profiles[profile] = per_mode
    return {"config": asdict(config), "profiles": profiles}
