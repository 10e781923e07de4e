"""The real `edgespec serve` command in a child process on a tiny checkpoint: for tests of what
an operator sees (signals, health, readiness), which an in-process server cannot show."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgespec.bench.processes import free_port
from edgespec.openai_api.cloud_health import VERIFIER_SERVICE
from tests.support.tiny_checkpoint import save_tiny_checkpoint

STARTUP_S = 120.0  # importing torch and loading the tiny model, on a loaded 2-core machine


class ServeProcess:
    """`edgespec serve` on a free loopback port; its output lines are collected as they come."""

    def __init__(self, directory: Path, *extra: str) -> None:
        target = directory / "tiny"
        if not target.exists():
            save_tiny_checkpoint(target)
        self.port = free_port()
        argv = [
            sys.executable, "-m", "edgespec.cli", "--log", "serve", "--target", str(target), "--dtype", "float32",
            "--exits", "none", "--port", str(self.port), "--threads", "1", "--max-sessions", "4", *extra,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.wait_for("edgespec: serving", STARTUP_S):
            self.kill()
            raise RuntimeError("serve did not start:\n" + "\n".join(self.lines[-30:]))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, text: str, timeout_s: float) -> bool:
        """Whether a line containing ``text`` was printed within ``timeout_s``."""
        with self._changed:
            return self._changed.wait_for(
                lambda: any(text in line for line in self.lines) or self.process.poll() is not None, timeout_s
            ) and any(text in line for line in self.lines)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)


def health_check(address: str) -> int | grpc.StatusCode:
    """What grpc_health_probe sees: the Verifier service's status, or the call's failure."""

    async def check() -> int | grpc.StatusCode:
        async with grpc.aio.insecure_channel(address) as channel:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=VERIFIER_SERVICE), timeout=2.0
                )
            except grpc.aio.AioRpcError as error:
                return error.code()
            return reply.status

    return asyncio.run(check())
