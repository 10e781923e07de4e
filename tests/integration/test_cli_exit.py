"""`edgespec generate` exits cleanly: after an outage with provisional text and a server restart,
and on Ctrl-C (exit 130). Its
stderr carries only what it means to say: no traceback, no asyncio or gRPC noise at exit
("Task was destroyed but it is pending", "Event loop is closed", "Exception ignored").

The CLI runs for real in a subprocess, with a tiny draft saved as a model directory and a tiny
verifier in this process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from chat_tokenizer import chat_tokenizer
from test_recovery import draft_model, serve

NOISE = re.compile(
    r"Task was destroyed|Traceback|Exception ignored|Event loop is closed|never awaited|Error in atexit|"
    r"^[EFIW]\d{4} \d\d:\d\d",  # gRPC core's own log lines
    re.MULTILINE,
)


@pytest.fixture(scope="module")
def draft_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("draft")
    draft_model().save_pretrained(directory)
    chat_tokenizer().save_pretrained(directory)
    return directory


def start_cli(draft_dir: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "edgespec.cli", "generate", "--server", f"127.0.0.1:{port}", "--draft", str(draft_dir),
        "--dtype", "float32", "--mode", "sd-ee-pipelined", "--max-new-tokens", "150", "--raw", "--retries", "0",
        "--probe-interval", "0.1", *extra, "hello",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    # Ctrl-C must reach Python's own handler, even when these tests run where SIGINT is ignored
    # (a background job): a child inherits that, and Python would never raise KeyboardInterrupt.
    def default_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, preexec_fn=default_sigint)


def first_text(proc: subprocess.Popen[bytes]) -> None:
    """Block until the CLI printed generated text: the generation is under way."""
    assert proc.stdout is not None
    assert os.read(proc.stdout.fileno(), 1), "the CLI ended before printing any text"  # raw: communicate() reads the pipe, not a buffer


def assert_clean(stderr: str) -> None:
    noise = NOISE.search(stderr)
    assert noise is None, f"noise on stderr: {noise.group(0)!r} in\n{stderr}"


def test_an_outage_with_provisional_text_and_a_restart_exits_cleanly(draft_dir: Path) -> None:
    servers = [serve(forward_sleep_s=0.05)]
    proc = start_cli(draft_dir, servers[0].port, "--outage-budget", "30")
    try:
        first_text(proc)
        servers[0].stop(grace=None)
        assert proc.stderr is not None
        # Restart once the CLI says it goes on with provisional text.
        seen = []
        for _ in range(100):
            seen.append(proc.stderr.readline().decode())
            if "provisional" in seen[-1].lower() or not seen[-1]:
                break
        servers.append(serve(servers[0].port, forward_sleep_s=0.05))
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        for server in servers:
            server.stop()
    stderr = "".join(seen) + err.decode()
    assert proc.returncode == 0, stderr
    assert_clean(stderr)
    assert "the server is back" in stderr and "switchbacks=1" in stderr
    assert "NOT the target's output" not in stderr  # every provisional token was re-verified


def test_ctrl_c_exits_130_cleanly(draft_dir: Path) -> None:
    server = serve(forward_sleep_s=0.05)
    proc = start_cli(draft_dir, server.port)
    try:
        first_text(proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        server.stop()
    stderr = err.decode()
    assert proc.returncode == 130, stderr
    assert_clean(stderr)
    assert "interrupted" in stderr
