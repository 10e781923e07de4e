"""Synchronous calls into the client's asyncio code: one shared event loop on a daemon thread."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")

_SYNC_LOOP: asyncio.AbstractEventLoop | None = None
_SYNC_LOOP_LOCK = threading.Lock()


def _sync_loop() -> asyncio.AbstractEventLoop:
    """One event loop, on a daemon thread, for every synchronous call in this process.

    grpc.aio's completion-queue poller stays bound to each loop it has served; a loop per call
    (asyncio.run) leaves it posting to closed loops ("Event loop is closed" tracebacks)."""
    global _SYNC_LOOP
    with _SYNC_LOOP_LOCK:
        if _SYNC_LOOP is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, daemon=True, name="edgespec-client").start()
            _SYNC_LOOP = loop
        return _SYNC_LOOP


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on the shared loop and wait for it. Interrupted (Ctrl-C in this thread),
    cancel it and wait until its cleanup ran (the stream cancelled, the drafts stopped) before
    re-raising: a task left pending at exit prints 'Task was destroyed but it is pending'."""
    finished = threading.Event()

    async def run() -> T:
        try:
            return await coroutine
        finally:
            finished.set()

    future = asyncio.run_coroutine_threadsafe(run(), _sync_loop())
    try:
        return future.result()
    except BaseException:
        if not future.done():
            future.cancel()
            finished.wait(_CANCEL_WAIT_S)
        raise


# How long an interrupted call waits for its generation to wind down (a draft step, a cancel).
_CANCEL_WAIT_S = 10.0
