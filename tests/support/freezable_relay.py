"""A TCP relay whose open connections can be frozen: bytes stop flowing both ways but nothing is
closed, like a link that dies without a reset (a cut cable, a NAT that forgot the flow). New
connections after a freeze relay normally, so a client that notices can reconnect through it.

It also numbers the connections it relays to the server, so a test can wait for "a connection
made after this point has come and gone" (a client's reachability probe) instead of sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Iterator


class FreezableRelay:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._frozen: list[asyncio.Event] = []  # one per connection, set = frozen
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="freezable-relay")
        self._changed = threading.Condition()
        self._relayed = 0  # connections that reached the server, numbered from 1
        self._ended: list[int] = []  # the numbers of those that have ended

    @property
    def relayed(self) -> int:
        with self._changed:
            return self._relayed

    def wait_for_ended_after(self, mark: int, timeout_s: float) -> bool:
        """True once a connection numbered above ``mark`` (made after ``relayed`` read ``mark``)
        has ended; False after ``timeout_s``."""
        with self._changed:
            return self._changed.wait_for(lambda: any(number > mark for number in self._ended), timeout_s)

    def freeze_open_connections(self) -> None:
        for frozen in list(self._frozen):
            self._loop.call_soon_threadsafe(frozen.set)

    @contextlib.contextmanager
    def running(self) -> Iterator[int]:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("relay did not start")
        try:
            yield self.port
        finally:
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _close(self) -> None:
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frozen = asyncio.Event()
        self._frozen.append(frozen)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        with self._changed:
            self._relayed += 1
            number = self._relayed
        await asyncio.gather(
            self._pump(reader, up_writer, frozen), self._pump(up_reader, writer, frozen), return_exceptions=True
        )
        with self._changed:
            self._ended.append(number)
            self._changed.notify_all()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, frozen: asyncio.Event) -> None:
        while not frozen.is_set():
            data = await reader.read(65536)
            if not data:
                writer.close()
                return
            if frozen.is_set():
                break
            writer.write(data)
            await writer.drain()
        await asyncio.Event().wait()  # hold the sockets open, silently, until the relay closes
