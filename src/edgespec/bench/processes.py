"""Server, link and client as separate OS processes, each pinned to its own core where the
machine has enough: the edge device and the cloud GPU never share a processor."""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def edgespec_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgespec.cli", *args]


def pin_to_core(core: int | None) -> Any:
    if core is None or not hasattr(os, "sched_setaffinity") or core >= (os.cpu_count() or 1):
        return None
    return lambda: os.sched_setaffinity(0, {core})


def wait_for_port(port: int, process: subprocess.Popen, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} before listening; see its log")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout_s:.0f} s")


def wait_for_line(path: str, text: str, process: subprocess.Popen, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} before it was ready; see {path}")
        with open(path, errors="replace") as log:
            if any(text in line for line in log):
                return
        time.sleep(0.5)
    raise RuntimeError(f"{what} was not ready within {timeout_s:.0f} s; see {path}")


@dataclass
class Deployment:
    server_port: int
    client_port: int  # where a client connects: the link if there is one, else the server


@contextmanager
def deploy(
    target: str,
    dtype: str,
    profile: str | None,
    exits: str = "auto",
    server_core: int | None = 0,
    log_dir: str = ".",
    startup_timeout_s: float = 1800.0,
    replicas: int = 0,
    cloud_draft: str | None = None,
    serve_args: Sequence[str] = (),
) -> Iterator[Deployment]:
    """Start `edgespec serve` (and `edgespec link --profile` in front of it); stop both after.
    ``replicas``: `serve --replicas N` (Ray Serve), unpinned so its replicas spread over the cores;
    it requires a token, which the client workers read from the same environment. ``cloud_draft``:
    the server drafts too (cloud-sd), with that model on its own core. ``serve_args``: more
    `edgespec serve` options, passed unchanged (after the ones set here)."""
    server_port = free_port()
    extra: list[str] = ["--cloud-draft", cloud_draft] if cloud_draft else []
    if replicas:
        extra += ["--replicas", str(replicas)]
        server_core = None
        os.environ.setdefault("EDGESPEC_AUTH_TOKEN", secrets.token_urlsafe(24))
    processes: list[subprocess.Popen] = []
    os.makedirs(log_dir, exist_ok=True)
    try:
        server = _start_server(target, dtype, exits, server_port, [*extra, *serve_args], server_core, log_dir)
        processes.append(server)
        # The first start joins and converts the target's weights: minutes, once.
        wait_for_port(server_port, server, startup_timeout_s, "edgespec serve")
        if replicas:  # Ray's proxy listens before the replicas are up; their banner says when
            wait_for_line(
                os.path.join(log_dir, "server.log"),
                "edgespec: serving",
                server,
                startup_timeout_s,
                "edgespec serve --replicas",
            )
        client_port = server_port
        if profile:
            client_port = free_port()
            link = _start_link(client_port, server_port, profile, log_dir)
            processes.append(link)
            wait_for_port(client_port, link, 60, "edgespec link")
        yield Deployment(server_port=server_port, client_port=client_port)
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=60)  # a replica cluster stops Ray's processes first
            except subprocess.TimeoutExpired:
                process.kill()


def _start_server(
    target: str,
    dtype: str,
    exits: str,
    port: int,
    options: Sequence[str],
    core: int | None,
    log_dir: str,
) -> subprocess.Popen:
    """`edgespec serve` on ``port`` with one thread, pinned to ``core``, logging to server.log;
    ``options`` follow the ones set here. Apart from `deploy` so its lifecycle reads in one screen;
    `deploy` owns the process (and stops it)."""
    server_log = open(os.path.join(log_dir, "server.log"), "w")
    return subprocess.Popen(
        edgespec_command(
            "serve",
            "--target",
            target,
            "--dtype",
            dtype,
            "--exits",
            exits,
            "--port",
            str(port),
            "--threads",
            "1",
            *options,
        ),
        stdout=server_log,
        stderr=subprocess.STDOUT,
        preexec_fn=pin_to_core(core),
    )


def _start_link(port: int, server_port: int, profile: str, log_dir: str) -> subprocess.Popen:
    """`edgespec link --profile` on ``port`` in front of the server, logging to link.log; `deploy`
    owns the process (and stops it)."""
    link_log = open(os.path.join(log_dir, "link.log"), "w")
    return subprocess.Popen(
        edgespec_command(
            "--log",
            "link",
            "--listen",
            str(port),
            "--upstream",
            f"127.0.0.1:{server_port}",
            "--profile",
            profile,
        ),
        stdout=link_log,
        stderr=subprocess.STDOUT,
    )


def run_client(
    address: str, args: Sequence[str], client_core: int | None = 1, timeout_s: float = 1800.0
) -> dict[str, Any]:
    """One `edgespec generate --server ... --json` in its own process; its JSON result."""
    completed = subprocess.run(
        edgespec_command("generate", "--server", address, "--json", "--threads", "1", *args),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        preexec_fn=pin_to_core(client_core),
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"the client failed (exit {completed.returncode}): {completed.stderr.strip()[-2000:]}")
    return json.loads(lines[-1])
