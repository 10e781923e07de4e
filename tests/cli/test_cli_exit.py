"""`edgespec generate` exits cleanly after an outage with provisional text and a server restart,
and Ctrl-C leaves nothing pending. Its
stderr carries only what it means to say: no traceback, no asyncio or gRPC noise at exit
("Task was destroyed but it is pending", "Event loop is closed", "Exception ignored").

The CLI runs for real in a subprocess, with a tiny draft saved as a model directory and a tiny
verifier in this process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgespec.client.sync_bridge import _sync_loop
from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from tests.client.test_recovery import PROMPT, draft_model, edge_client, serve
from tests.support.chat_tokenizer import chat_tokenizer

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
    assert proc.stdout is not None and proc.stderr is not None
    if not os.read(proc.stdout.fileno(), 1):  # raw: communicate() reads the pipe, not a buffer
        proc.wait(10)
        raise AssertionError(
            f"the CLI ended (exit {proc.returncode}) before printing any text; stderr:\n{proc.stderr.read().decode()}"
        )


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


def test_ctrl_c_cancels_the_generation_and_leaves_no_task_pending() -> None:
    """What Ctrl-C does to `edgespec generate` (exit 130, "edgespec: interrupted"), in process to
    keep the suite short: SIGINT while the caller waits cancels the generation, which returns
    only once its cleanup ran, so no task is left to be destroyed at exit."""
    server = serve(forward_sleep_s=0.05)
    streamed: list[int] = []

    def interrupt(tokens: list[int]) -> None:
        if not streamed:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, delivered to the waiting main thread
        streamed.extend(tokens)

    # Python's own handler, even where the suite runs with SIGINT ignored (a background job).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    # Tasks of earlier tests on the shared loop are theirs to answer for: only new ones count.
    before = set(asyncio.run_coroutine_threadsafe(other_tasks(), _sync_loop()).result(10))
    try:
        with pytest.raises(KeyboardInterrupt):
            edge_client(server.port).generate(
                PROMPT, Mode.SD_EE_PIPELINED, GenerationConfig(max_new_tokens=200, gamma=3), interrupt
            )
        pending = asyncio.run_coroutine_threadsafe(tasks_left_besides(set(before)), _sync_loop()).result(10)
    finally:
        signal.signal(signal.SIGINT, previous)
        server.stop()
    assert 0 < len(streamed) < 200, "the generation was not cut short"
    assert pending == []


async def tasks_left_besides(before: set[str], timeout_s: float = 2.0) -> list[str]:
    """New tasks still pending once the loop has run what was already due: gRPC finishes a
    cancelled call's status handling in a task whose future is done but which has not run yet."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        left = [task for task in await other_tasks() if task not in before]
        if not left or asyncio.get_running_loop().time() > deadline:
            return left
        await asyncio.sleep(0.01)


async def other_tasks() -> list[str]:
    return [repr(task) for task in asyncio.all_tasks() if task is not asyncio.current_task()]
