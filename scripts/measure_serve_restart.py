"""How long `edgespec serve` takes to (re)start with the default target loaded from the local
cache: launch, poll the port until it accepts a connection, stop with SIGTERM; twice. The client's
default outage budget (`RecoveryPolicy.outage_budget_s`) must cover stop + start.

    PYTHONPATH=src python scripts/measure_serve_restart.py [--target NAME]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="qwen2.5-coder-1.5b")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    port = free_port()
    for run in range(args.runs):
        started = time.monotonic()
        command = [sys.executable, "-m", "edgespec.cli", "serve", "--target", args.target, "--port", str(port), "--threads", "1"]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        refused = 0
        while time.monotonic() - started < args.timeout:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                refused += 1
                time.sleep(0.2)  # polling a port from outside: no event to wait on
        ready = time.monotonic() - started
        assert proc.stdout is not None
        print(f"run {run}: port open after {ready:.1f} s ({refused} refused connects meanwhile); {proc.stdout.readline().strip()}", flush=True)
        stopping = time.monotonic()
        proc.terminate()
        proc.wait(120)
        print(f"run {run}: stopped {time.monotonic() - stopping:.1f} s after SIGTERM", flush=True)


if __name__ == "__main__":
    main()
