"""A user-space TCP link emulator: a proxy that adds delay, jitter, a bandwidth cap and
loss-as-delay between real sockets (this kernel has no netem).

Each accepted client connection gets its own upstream connection and two independent
directions. A direction is a `LinkModel` (pure arithmetic: when is a chunk delivered?, in
`model.py`) plus a bounded `DelayLine` (`delay_line.py`) that holds chunks until that time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from dataclasses import dataclass
from typing import Iterator

from edgespec.link.delay_line import DelayLine, split_pieces
from edgespec.link.model import MAX_PIECE_BYTES, LinkModel, direction_rng
from edgespec.link.profiles import LinkProfile

__all__ = ["LinkEmulator", "LinkStats"]

logger = logging.getLogger(__name__)

_READ_BYTES = 64 * 1024
# Without a cap the buffer is what limits throughput (buffer / delay), so it must be roomy; with a
# cap, twice the bandwidth-delay product keeps the link busy without minutes of bufferbloat.
_UNCAPPED_BUFFER_BYTES = 4 * 1024 * 1024
_MIN_CAPPED_BUFFER_BYTES = 256 * 1024
_CLOSE_TIMEOUT_S = 2.0

UP, DOWN = "up", "down"


@dataclass(frozen=True)
class LinkStats:
    """A snapshot; `bytes_up` is client → upstream, `bytes_down` upstream → client (delivered)."""

    bytes_up: int = 0
    bytes_down: int = 0
    connections: int = 0
    active_connections: int = 0
    loss_events: int = 0


def _set_nodelay(writer: asyncio.StreamWriter) -> None:
    # Nagle would add up to 40 ms of its own to small gRPC frames and spoil the emulated delay.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class LinkEmulator:
    """Listens on `listen_host:listen_port` and relays each connection to the upstream through
    an emulated link shaped by `profile`, the same in both directions.

    `emulate_handshake` holds a new connection's first client bytes for one extra round trip,
    which the TCP handshake would cost on a real link (the local accept is instant).
    `max_buffer_bytes` bounds what each direction holds in flight (default: see module).
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        profile: LinkProfile,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        seed: int = 0,
        *,
        emulate_handshake: bool = True,
        max_buffer_bytes: int | None = None,
        connect_timeout_s: float = 10.0,
    ) -> None:
        if max_buffer_bytes is not None and max_buffer_bytes < MAX_PIECE_BYTES:
            raise ValueError(f"max_buffer_bytes must be >= {MAX_PIECE_BYTES}, got {max_buffer_bytes}")
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.profile = profile
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.seed = seed
        self.emulate_handshake = emulate_handshake
        self.buffer_bytes = max_buffer_bytes or _default_buffer_bytes(profile)
        self.connect_timeout_s = connect_timeout_s
        self._server: asyncio.AbstractServer | None = None
        self._closing = False
        self._port: int | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._counts = {UP: 0, DOWN: 0}
        self._connections = 0
        self._active = 0
        self._live_models: set[LinkModel] = set()
        self._retired_loss_events = 0
        # Thread wrapper state.
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._thread_error: BaseException | None = None

    # -- asyncio API ---------------------------------------------------------------------

    async def start(self) -> int:
        """Start listening; returns the bound port."""
        if self._server is not None:
            raise RuntimeError("link emulator already started")
        self._closing = False
        self._server = await asyncio.start_server(self._handle, self.listen_host, self.listen_port)
        self._port = int(self._server.sockets[0].getsockname()[1])
        logger.debug(
            "link emulator %s:%d -> %s:%d (%s)",
            self.listen_host,
            self._port,
            self.upstream_host,
            self.upstream_port,
            self.profile.describe(),
        )
        return self._port

    async def stop(self) -> None:
        """Stop listening and drop every open connection (abruptly: in-flight bytes are lost)."""
        if self._server is None:
            return
        self._closing = True
        self._server.close()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        logger.info("link emulator on port %s stopped: %s", self._port, self.stats)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("link emulator not started")
        return self._port

    @property
    def stats(self) -> LinkStats:
        return LinkStats(
            bytes_up=self._counts[UP],
            bytes_down=self._counts[DOWN],
            connections=self._connections,
            active_connections=self._active,
            loss_events=self._retired_loss_events + sum(model.loss_events for model in list(self._live_models)),
        )

    # -- thread wrapper ------------------------------------------------------------------

    def run_in_thread(self, timeout_s: float = 10.0) -> int:
        """Run on a private event loop in a daemon thread; returns the bound port."""
        if self._thread is not None:
            raise RuntimeError("link emulator thread already running")
        ready = threading.Event()
        self._thread_error = None
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._thread_main(ready)), name="edgespec-link-emulator", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout_s):
            raise RuntimeError(f"link emulator did not start within {timeout_s} s")
        if self._thread_error is not None:
            self._thread.join(timeout_s)
            self._thread = None
            raise self._thread_error
        return self.port

    def stop_thread(self, timeout_s: float = 10.0) -> None:
        """Stop what `run_in_thread` started and wait for its thread to end."""
        thread, loop, stop = self._thread, self._loop, self._stop_requested
        if thread is None:
            return
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop may already be gone
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout_s)
        if thread.is_alive():
            raise RuntimeError(f"link emulator thread did not stop within {timeout_s} s")
        self._thread = None

    @contextlib.contextmanager
    def running(self) -> Iterator[int]:
        """`with LinkEmulator(...).running() as port:` for code without an event loop."""
        port = self.run_in_thread()
        try:
            yield port
        finally:
            self.stop_thread()

    async def _thread_main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        try:
            await self.start()
        except BaseException as error:  # handed to the caller's thread, which re-raises it
            self._thread_error = error
            ready.set()
            return
        ready.set()
        try:
            await self._stop_requested.wait()
        finally:
            await self.stop()

    # -- connections ---------------------------------------------------------------------

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._closing:
            client_writer.transport.abort()
            return
        self._handlers.add(task)  # type: ignore[arg-type]
        connection = self._connections
        self._connections += 1
        self._active += 1
        try:
            await self._serve(connection, client_reader, client_writer)
        except asyncio.CancelledError:
            # stop() cancels handlers; ending quietly spares Python 3.11's stream callback, which
            # calls task.exception() on a cancelled task and logs a spurious traceback.
            if not self._closing:
                raise
        finally:
            self._active -= 1
            self._handlers.discard(task)  # type: ignore[arg-type]

    async def _serve(
        self, connection: int, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        accepted = asyncio.get_running_loop().time()
        upstream_writer: asyncio.StreamWriter | None = None
        models: tuple[LinkModel, LinkModel] | None = None
        clean = False
        try:
            _set_nodelay(client_writer)
            upstream = await self._connect_upstream(connection)
            if upstream is None:
                return
            upstream_reader, upstream_writer = upstream
            _set_nodelay(upstream_writer)
            models = self._new_models(connection, accepted)
            clean = await self._relay(
                (client_reader, upstream_writer, models[0], UP), (upstream_reader, client_writer, models[1], DOWN)
            )
        except Exception:  # a bug here must not kill the server; asyncio would only log it anyway
            logger.exception("link emulator connection %d failed", connection)
        finally:
            if models is not None:
                self._retire_models(models)
            await _close(client_writer, clean)
            if upstream_writer is not None:
                await _close(upstream_writer, clean)
            logger.debug("connection %d closed (%s)", connection, "clean" if clean else "aborted")

    async def _connect_upstream(self, connection: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(self.upstream_host, self.upstream_port), self.connect_timeout_s
            )
        except (OSError, asyncio.TimeoutError) as error:
            logger.warning(
                "connection %d: upstream %s:%d unreachable: %s",
                connection,
                self.upstream_host,
                self.upstream_port,
                error or type(error).__name__,
            )
            return None

    def _new_models(self, connection: int, accepted: float) -> tuple[LinkModel, LinkModel]:
        up = LinkModel(self.profile, direction_rng(self.seed, connection, UP))
        down = LinkModel(self.profile, direction_rng(self.seed, connection, DOWN))
        if self.emulate_handshake:
            # A real client's connect() returns after SYN + SYN-ACK: its first byte leaves one
            # round trip after it started connecting.
            up.hold(accepted + 2.0 * self.profile.one_way_delay_ms / 1000.0)
        self._live_models.update((up, down))
        return up, down

    def _retire_models(self, models: tuple[LinkModel, ...]) -> None:
        # Fold finished connections into a counter so a long-running emulator does not hoard models.
        for model in models:
            self._live_models.discard(model)
            self._retired_loss_events += model.loss_events

    async def _relay(self, *directions: tuple[asyncio.StreamReader, asyncio.StreamWriter, LinkModel, str]) -> bool:
        """Pump every direction until each has delivered its EOF; False if a side failed."""
        tasks: list[asyncio.Task[None]] = []
        for reader, writer, model, name in directions:
            line = DelayLine(self.buffer_bytes)
            tasks.append(asyncio.ensure_future(self._ingest(reader, line, model)))
            tasks.append(asyncio.ensure_future(self._deliver(line, writer, name)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            failure = next((task.exception() for task in done if task.exception() is not None), None)
            if failure is not None:
                if not isinstance(failure, (ConnectionError, OSError)):
                    raise failure
                logger.debug("connection reset: %s", failure)
                return False
            return True
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _ingest(self, reader: asyncio.StreamReader, line: DelayLine, model: LinkModel) -> None:
        loop = asyncio.get_running_loop()

        def schedule(nbytes: int) -> float:
            return model.schedule(loop.time(), nbytes)

        while True:
            data = await reader.read(_READ_BYTES)
            if not data:
                await line.put(None, schedule)  # the FIN travels the link like data
                return
            for piece in split_pieces(data):
                await line.put(piece, schedule)

    async def _deliver(self, line: DelayLine, writer: asyncio.StreamWriter, direction: str) -> None:
        loop = asyncio.get_running_loop()
        while True:
            wait = await line.next_delivery() - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            # Everything already due goes out in one write: fewer syscalls when a backlog builds.
            pieces, eof = line.pop_due(loop.time())
            if pieces:
                data = b"".join(pieces)
                # Counted first: write() may hand bytes to a peer thread that reads stats next.
                self._counts[direction] += len(data)
                writer.write(data)
            if eof:
                if writer.can_write_eof():
                    writer.write_eof()
                await writer.drain()
                return
            await writer.drain()


def _default_buffer_bytes(profile: LinkProfile) -> int:
    rate = profile.bytes_per_second
    if rate is None:
        return _UNCAPPED_BUFFER_BYTES
    worst_delay_s = (profile.one_way_delay_ms + profile.jitter_ms + profile.loss_penalty_ms * (profile.loss > 0)) / 1000
    return max(_MIN_CAPPED_BUFFER_BYTES, int(2 * rate * worst_delay_s))


async def _close(writer: asyncio.StreamWriter, clean: bool) -> None:
    if not clean:
        writer.transport.abort()
        return
    writer.close()
    # The peer may be gone or stalled; a close must not hang the handler (or stop()).
    with contextlib.suppress(OSError, asyncio.TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), _CLOSE_TIMEOUT_S)
