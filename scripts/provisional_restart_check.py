"""Real models end to end: `edgespec serve --target smollm2-135m` (fp32) is SIGKILLed as soon as
`edgespec generate` prints its first text (draft smollm2-135m in bf16, so it sometimes disagrees
with the target) and started again; the client's stdout (final text only) must equal an
uninterrupted run's, greedy and seeded sampling.

    PYTHONPATH=src python scripts/provisional_restart_check.py
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(port: int) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "edgespec.cli", "serve", "--target", "smollm2-135m", "--dtype", "float32", "--port", str(port), "--threads", "1"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV)
    started = time.monotonic()
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # printed once the port is open
    print(f"server up in {time.monotonic() - started:.1f} s: {line}", flush=True)
    return proc


def generate(port: int, mode: str, temperature: str) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "edgespec.cli", "generate", "--server", f"127.0.0.1:{port}", "--draft", "smollm2-135m",
        "--dtype", "bfloat16", "--mode", mode, "--max-new-tokens", "64", "--temperature", temperature, "--seed", "3",
        "--retries", "1", "--probe-interval", "0.5", "Write a short poem about the sea.",
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)


def main() -> int:
    port = free_port()
    server = serve(port)
    failures = 0
    try:
        for mode, temperature in [("sd-ee-predraft", "0"), ("sd", "0.8")]:
            expected, _ = generate(port, mode, temperature).communicate(timeout=600)
            proc = generate(port, mode, temperature)
            assert proc.stdout is not None
            first = os.read(proc.stdout.fileno(), 1)  # raw: communicate() reads the pipe, not a buffer
            server.send_signal(signal.SIGKILL)
            server.wait()
            server = serve(port)
            rest, err = proc.communicate(timeout=600)
            equal = first + rest == expected
            failures += not equal
            stats = [line for line in err.decode().splitlines() if line.startswith("mode=")]
            print(f"{mode} temperature {temperature}: final text equals the uninterrupted run: {equal}; {stats[-1] if stats else ''}", flush=True)
    finally:
        server.kill()
    return int(failures > 0)


if __name__ == "__main__":
    raise SystemExit(main())
