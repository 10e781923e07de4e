"""Real models end to end: `edgespec serve --target smollm2-135m` (fp32) is SIGKILLed as soon as
`edgespec generate` prints its first text (draft smollm2-135m in bf16, so it sometimes disagrees
with the target) and started again; the client's stdout (final text only) equals an
uninterrupted run's, greedy and seeded sampling."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Iterator

import pytest

pytestmark = pytest.mark.slow

ENV = dict(os.environ, OMP_NUM_THREADS="1")
PROMPT = "Write a short poem about the sea."


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`edgespec serve` on a fixed port, which a test may kill and start again."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process = self._start()

    def _start(self) -> subprocess.Popen[str]:
        command = [
            sys.executable,
            "-m",
            "edgespec.cli",
            "serve",
            "--target",
            "smollm2-135m",
            "--dtype",
            "float32",
            "--port",
            str(self.port),
            "--threads",
            "1",
        ]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV)
        assert process.stdout is not None
        process.stdout.readline()  # printed once the port is open
        return process

    def crash_and_restart(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process = self._start()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    running = Server(free_port())
    try:
        yield running
    finally:
        running.process.kill()
        running.process.wait()


def generate(port: int, mode: str, temperature: str) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "edgespec.cli",
        "generate",
        "--server",
        f"127.0.0.1:{port}",
        "--draft",
        "smollm2-135m",
        "--dtype",
        "bfloat16",
        "--mode",
        mode,
        "--max-new-tokens",
        "64",
        "--temperature",
        temperature,
        "--seed",
        "3",
        "--retries",
        "1",
        "--probe-interval",
        "0.5",
        PROMPT,
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)


@pytest.mark.parametrize("mode, temperature", [("sd-ee-predraft", "0"), ("sd", "0.8")])
def test_a_server_killed_mid_generation_and_restarted_costs_no_text(
    server: Server, mode: str, temperature: str
) -> None:
    expected, _ = generate(server.port, mode, temperature).communicate(timeout=600)
    client = generate(server.port, mode, temperature)
    assert client.stdout is not None
    first = os.read(client.stdout.fileno(), 1)  # raw: communicate() reads the pipe, not a buffer
    started = time.monotonic()
    server.crash_and_restart()
    rest, _ = client.communicate(timeout=600)
    assert first + rest == expected, f"the final text differs after a restart of {time.monotonic() - started:.1f} s"
