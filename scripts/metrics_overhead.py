"""What scraping serve's metrics costs a 4-client benchmark, measured end to end.

Two `edgespec serve` processes of the same model on one core: one without metrics, one with
`--metrics-port`, scraped every second while it serves. Four edge clients (this process, on the
other core) generate the same prompts against each in turn, the order alternating pair by pair
(A B, B A, ...) so drift on a shared machine falls on both. Prints one JSON line per run and a
summary: median wall times and their ratio, and the same for the verifier process's CPU seconds
(user + system), which other work on a shared machine disturbs far less than wall time; the
host's load and CPU.

`--same-server` measures scraping alone: one verifier with metrics, its runs scraped and not
scraped alternating, so no difference between two processes (which can exceed 10 % on a loaded
host) enters the ratio.

    python scripts/metrics_overhead.py --same-server --repeats 4
    python scripts/metrics_overhead.py --repeats 6

Timings: run it at normal priority, on a machine as quiet as you can get; the summary says how
loaded it was.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import psutil

from edgespec.bench.processes import edgespec_command, free_port, pin_to_core, wait_for_port
from edgespec.client.edge_client import ClientOptions, EdgeClient
from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.hostinfo import cpu_model
from edgespec.models.draft import DraftRuntime
from edgespec.models.loading import load_model
from edgespec.prompting import render_prompt

CLIENTS = 4
PROMPTS = (
    "Write a Python function that reverses a linked list.",
    "Explain what a hash map is in two sentences.",
    "List three uses of binary search.",
    "Write a haiku about compilers.",
)


@dataclass
class Verifier:
    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int | None


def start_verifier(model: str, metrics: bool, core: int | None) -> Verifier:
    port = free_port()
    metrics_port = free_port() if metrics else None
    args = ["serve", "--target", model, "--dtype", "float32", "--exits", "none", "--port", str(port)]
    args += ["--threads", "1", "--max-sessions", str(CLIENTS)]
    if metrics_port is not None:
        args += ["--metrics-port", str(metrics_port)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        edgespec_command(*args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        preexec_fn=pin_to_core(core),
    )
    wait_for_port(port, process, 300.0, f"serve ({'metrics' if metrics else 'no metrics'})")
    return Verifier(process, port, metrics_port)


# The scraper process's program: standard library only, so it starts in milliseconds; scrapes
# until interrupted, then prints "scrapes bytes".
SCRAPER = """
import sys, time, urllib.request
url, interval, scrapes, size = sys.argv[1], float(sys.argv[2]), 0, 0
try:
    while True:
        time.sleep(interval)
        with urllib.request.urlopen(url, timeout=10) as response:
            size += len(response.read())
        scrapes += 1
except KeyboardInterrupt:
    pass
print(scrapes, size, flush=True)
"""


class Scraper:
    """GET /metrics every ``interval_s`` while running, as Prometheus would: a process of its own
    (on the clients' core), so neither the clients' interpreter nor the verifier's pays for the
    scraping side."""

    def __init__(self, port: int, interval_s: float, core: int | None) -> None:
        self.command = [sys.executable, "-c", SCRAPER, f"http://127.0.0.1:{port}/metrics", str(interval_s)]
        self.core = core
        self.scrapes = 0
        self.bytes = 0

    def __enter__(self) -> Scraper:
        self._process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, text=True, preexec_fn=pin_to_core(self.core)
        )
        return self

    def __exit__(self, *_: object) -> None:
        self._process.send_signal(signal.SIGINT)
        out, _ = self._process.communicate(timeout=30)
        self.scrapes, self.bytes = (int(value) for value in out.split())


async def one_run(address: str, drafts: list[DraftRuntime], prompts: list[list[int]], new_tokens: int) -> list:
    config = GenerationConfig(max_new_tokens=new_tokens, gamma=4)
    options = ClientOptions(connect_timeout_s=30.0, read_timeout_s=120.0)
    clients = [EdgeClient(address, draft, options) for draft in drafts]
    results = await asyncio.gather(
        *(client.agenerate(prompt, Mode.SD, config) for client, prompt in zip(clients, prompts))
    )
    return [result.tokens for result in results]


def server_cpu_s(verifier: Verifier) -> float:
    """CPU seconds (user + system) the verifier process has used so far, all its threads."""
    times = psutil.Process(verifier.process.pid).cpu_times()
    return float(times.user + times.system)


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def summarize(
    walls: dict[str, list[float]],
    cpus: dict[str, list[float]],
    outputs: dict[str, list],
    args: argparse.Namespace,
    load_before: str,
) -> dict:
    """Medians, their ratios (metrics on over off) and the conditions they were measured in."""
    names = list(walls)
    off, on = (statistics.median(walls[name]) for name in names)
    cpu_off, cpu_on = (statistics.median(cpus[name]) for name in names)
    summary = {
        "median_wall_s": {name: round(statistics.median(walls[name]), 3) for name in names},
        "ratio_on_over_off": round(on / off, 4),
        "median_server_cpu_s": {name: round(statistics.median(cpus[name]), 3) for name in names},
        "cpu_ratio_on_over_off": round(cpu_on / cpu_off, 4),
        "spread_wall_s": {name: [round(min(walls[name]), 3), round(max(walls[name]), 3)] for name in names},
        "same_tokens": outputs[names[0]] == outputs[names[1]],
        "clients": CLIENTS,
        "new_tokens": args.new_tokens,
        "model": args.model,
        "scrape_interval_s": args.scrape_interval,
        "load_before": load_before,
        "load_after": load_average(),
        "cpu": cpu_model(),
    }
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="target and draft (the smoke model by default)")
    parser.add_argument("--repeats", type=int, default=6, help="runs per setting (alternating)")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument(
        "--scrape-interval", type=float, default=1.0, metavar="S", help="0: metrics kept but never scraped"
    )
    parser.add_argument(
        "--same-server",
        action="store_true",
        help="one verifier with metrics, runs scraped and not scraped alternating (no process-to-process difference)",
    )
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    server_core, client_core = (0, 1) if cores >= 2 else (None, None)
    if client_core is not None:
        os.sched_setaffinity(0, {client_core})
    import torch

    torch.set_num_threads(1)
    loaded = load_model(args.model, "float32")
    drafts = [DraftRuntime(loaded.model) for _ in range(CLIENTS)]  # shared weights, own caches
    prompts = [render_prompt(loaded.tokenizer, text) for text in PROMPTS]
    if args.same_server:  # scraping alone: one verifier with metrics, scraped or not
        verifiers = [start_verifier(args.model, True, server_core)]
        settings = [("metrics on, not scraped", verifiers[0], False), ("metrics on, scraped", verifiers[0], True)]
    else:
        verifiers = [start_verifier(args.model, metrics, server_core) for metrics in (False, True)]
        scraping = args.scrape_interval > 0
        settings = [
            ("metrics off", verifiers[0], False),
            ("metrics on" + (", scraped" if scraping else ""), verifiers[1], scraping),
        ]
    walls: dict[str, list[float]] = {name: [] for name, _, _ in settings}
    cpus: dict[str, list[float]] = {name: [] for name, _, _ in settings}
    outputs: dict[str, list] = {}
    load_before = load_average()
    try:
        for verifier in verifiers:  # warm-up: first sessions pay one-time costs
            asyncio.run(one_run(f"127.0.0.1:{verifier.port}", drafts, prompts, 4))
        for repeat in range(args.repeats):
            for name, verifier, scrape in settings if repeat % 2 == 0 else settings[::-1]:
                address = f"127.0.0.1:{verifier.port}"
                scraper = Scraper(verifier.metrics_port, args.scrape_interval, client_core) if scrape else None
                # The scraper is up before the clock starts: its start is no part of the run.
                with scraper if scraper is not None else contextlib.nullcontext():
                    cpu_before = server_cpu_s(verifier)
                    started = time.perf_counter()
                    tokens = asyncio.run(one_run(address, drafts, prompts, args.new_tokens))
                    wall = time.perf_counter() - started
                    cpu = server_cpu_s(verifier) - cpu_before
                walls[name].append(wall)
                cpus[name].append(cpu)
                outputs.setdefault(name, tokens)
                row = {"repeat": repeat, "setting": name, "wall_s": round(wall, 3), "server_cpu_s": round(cpu, 3)}
                row["load"] = load_average()
                if scraper is not None:
                    row.update(scrapes=scraper.scrapes, scrape_bytes=scraper.bytes)
                print(json.dumps(row), flush=True)
    finally:
        for verifier in verifiers:
            verifier.process.terminate()
            verifier.process.wait(timeout=30)
    summary = summarize(walls, cpus, outputs, args, load_before)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
