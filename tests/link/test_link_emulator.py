"""The link emulator over real loopback sockets: delay, bandwidth, order, close, validation,
reproducibility. Timing asserts use medians and generous upper bounds for a loaded machine, but
strict lower bounds: the emulator must never be faster than the link it claims to be."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import socket
import socketserver
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import pytest

from edgespec.cli.link import add_link_parser, parse_host_port
from edgespec.link import PROFILES, LinkEmulator, LinkProfile, resolve_profile
from edgespec.link.model import MAX_PIECE_BYTES, LinkModel, direction_rng

HOST = "127.0.0.1"
IO_TIMEOUT_S = 10.0
CLOSE_COMMAND = b"!close"


# -- upstream servers ---------------------------------------------------------------------


class _Upstream(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__((HOST, 0), _EchoHandler)
        self.eof_seen = threading.Event()
        self.received = 0
        self.last_byte_at = 0.0
        self.lock = threading.Lock()


class _EchoHandler(socketserver.BaseRequestHandler):
    """Echoes until EOF; closes its side on EOF or when asked to with CLOSE_COMMAND."""

    server: _Upstream

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(IO_TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            try:
                data = sock.recv(256 * 1024)
            except OSError:
                return
            if not data:
                self.server.eof_seen.set()
                return
            with self.server.lock:
                self.server.received += len(data)
                self.server.last_byte_at = time.monotonic()
            try:
                sock.sendall(data)
            except OSError:
                return
            if data.endswith(CLOSE_COMMAND):
                return


@contextmanager
def upstream_server() -> Iterator[_Upstream]:
    server = _Upstream()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(IO_TIMEOUT_S)


@contextmanager
def linked(profile: LinkProfile, **kwargs: object) -> Iterator[tuple[_Upstream, LinkEmulator, int]]:
    with upstream_server() as server:
        emulator = LinkEmulator(HOST, server.server_address[1], profile, **kwargs)  # type: ignore[arg-type]
        with emulator.running() as port:
            yield server, emulator, port


def connect(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=IO_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            raise AssertionError(f"connection closed with {remaining} of {size} bytes missing")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def ping_ms(sock: socket.socket, payload: bytes = b"x" * 32) -> float:
    start = time.perf_counter()
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload
    return (time.perf_counter() - start) * 1000.0


def wait_until(condition, timeout_s: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


# -- (a) delay ----------------------------------------------------------------------------


def test_round_trip_is_twice_the_one_way_delay() -> None:
    with linked(LinkProfile("test", one_way_delay_ms=40)) as (_, _, port), connect(port) as sock:
        ping_ms(sock)  # the first one also pays the emulated handshake
        rtts = [ping_ms(sock) for _ in range(10)]
    assert min(rtts) >= 80.0 - 0.1, rtts  # never faster than the link
    assert statistics.median(rtts) <= 80.0 + 30.0, rtts


def test_new_connection_pays_the_handshake_round_trip() -> None:
    with linked(LinkProfile("test", one_way_delay_ms=40)) as (_, _, port):
        start = time.perf_counter()
        with connect(port) as sock:
            first = ping_ms(sock)
        total_ms = (time.perf_counter() - start) * 1000.0
    # SYN, SYN-ACK, then the request and its echo: two round trips before the first reply.
    assert total_ms >= 160.0 - 0.1
    assert total_ms <= 160.0 + 60.0, (total_ms, first)


def test_zero_delay_link_adds_under_10_ms() -> None:
    with linked(LinkProfile("zero", one_way_delay_ms=0)) as (_, _, port), connect(port) as sock:
        rtts = [ping_ms(sock) for _ in range(10)]
    assert statistics.median(rtts) < 10.0, rtts


# -- (b) bandwidth ------------------------------------------------------------------------


def test_bandwidth_cap_is_met_and_never_exceeded() -> None:
    size, mbit = 2_000_000, 8.0
    payload = random.Random(1).randbytes(size)
    with linked(LinkProfile("capped", one_way_delay_ms=0, bandwidth_mbit=mbit)) as (server, emulator, port):
        with connect(port) as sock:
            drain = threading.Thread(target=_discard, args=(sock, size), daemon=True)
            drain.start()  # the echo comes back too; reading it keeps the upstream from stalling
            start = time.monotonic()
            sock.sendall(payload)
            assert wait_until(lambda: server.received >= size, timeout_s=15.0), server.received
            elapsed = server.last_byte_at - start
            drain.join(IO_TIMEOUT_S)
        stats = emulator.stats
    measured_mbit = size * 8 / elapsed / 1e6
    assert elapsed >= size * 8 / (mbit * 1e6) * 0.999, elapsed  # never faster than the cap
    assert 0.8 * mbit <= measured_mbit <= mbit * 1.001, measured_mbit
    assert stats.bytes_up == size and stats.bytes_down == size


def _discard(sock: socket.socket, size: int) -> None:
    with contextlib_suppress_oserror():
        recv_exactly(sock, size)


@contextmanager
def contextlib_suppress_oserror() -> Iterator[None]:
    try:
        yield
    except (OSError, AssertionError):
        pass


# -- (c) order and integrity --------------------------------------------------------------


@pytest.mark.parametrize(
    "profile",
    [
        LinkProfile("jitter", one_way_delay_ms=5, jitter_ms=5),
        LinkProfile("lossy", one_way_delay_ms=2, jitter_ms=2, bandwidth_mbit=400, loss=0.05, loss_penalty_ms=10),
    ],
    ids=["jitter", "jitter+loss+cap"],
)
def test_bytes_arrive_complete_and_in_order(profile: LinkProfile) -> None:
    size = 3_000_000
    payload = random.Random(2).randbytes(size)
    with linked(profile, seed=7) as (_, emulator, port), connect(port) as sock:
        sender = threading.Thread(target=_send_in_random_chunks, args=(sock, payload), daemon=True)
        sender.start()
        echoed = recv_exactly(sock, size)
        sender.join(IO_TIMEOUT_S)
        stats = emulator.stats
    assert echoed == payload
    assert stats.bytes_up == size and stats.bytes_down == size
    if profile.loss:
        assert stats.loss_events > 0


def _send_in_random_chunks(sock: socket.socket, payload: bytes) -> None:
    rng = random.Random(3)
    offset = 0
    while offset < len(payload):
        step = rng.choice([1, 7, 100, 1500, MAX_PIECE_BYTES + 1, 200_000])
        sock.sendall(payload[offset : offset + step])
        offset += step


# -- (d) closing --------------------------------------------------------------------------


def test_closing_the_client_closes_the_upstream() -> None:
    with linked(LinkProfile("test", one_way_delay_ms=5)) as (server, emulator, port):
        with connect(port) as sock:
            ping_ms(sock)
            assert emulator.stats.active_connections == 1
        assert server.eof_seen.wait(5.0)
        assert wait_until(lambda: emulator.stats.active_connections == 0)
        assert emulator.stats.connections == 1


def test_closing_the_upstream_closes_the_client() -> None:
    with linked(LinkProfile("test", one_way_delay_ms=5)) as (_, emulator, port), connect(port) as sock:
        sock.sendall(b"bye" + CLOSE_COMMAND)
        assert recv_exactly(sock, 3 + len(CLOSE_COMMAND)) == b"bye" + CLOSE_COMMAND
        assert sock.recv(1) == b""  # EOF reached the client
        sock.close()
        assert wait_until(lambda: emulator.stats.active_connections == 0)


def test_half_close_still_delivers_the_reply() -> None:
    with linked(LinkProfile("test", one_way_delay_ms=5)) as (_, _, port), connect(port) as sock:
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)
        assert recv_exactly(sock, 10) == b"last words"
        assert sock.recv(1) == b""


def test_unreachable_upstream_closes_the_client() -> None:
    with socket.socket() as placeholder:
        placeholder.bind((HOST, 0))
        dead_port = placeholder.getsockname()[1]  # bound, never listening: connections are refused
        with LinkEmulator(HOST, dead_port, PROFILES["lan"]).running() as port, connect(port) as sock:
            sock.settimeout(5.0)
            try:
                assert sock.recv(1) == b""
            except ConnectionResetError:
                pass


def test_stopping_with_a_connection_open_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    with linked(LinkProfile("test", one_way_delay_ms=20)) as (_, emulator, port):
        sock = connect(port)
        ping_ms(sock)
        sock.sendall(b"in flight")
    with sock:
        sock.settimeout(5.0)
        try:
            assert sock.recv(64) == b""  # the emulator dropped the connection
        except ConnectionResetError:
            pass
    assert emulator.stats.active_connections == 0
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR], caplog.text


def test_async_stop_drops_open_connections_and_leaks_no_tasks() -> None:
    async def scenario() -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
            writer.close()

        errors: list[dict[str, object]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
        upstream = await asyncio.start_server(echo, HOST, 0)
        emulator = LinkEmulator(HOST, upstream.sockets[0].getsockname()[1], LinkProfile("t", 10))
        port = await emulator.start()
        before = asyncio.all_tasks()
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.readexactly(5), 5.0) == b"hello"
        await emulator.stop()
        assert emulator.stats.active_connections == 0
        leftover = asyncio.all_tasks() - before - {asyncio.current_task()}
        # The upstream's own echo handler may still be finishing; no emulator task may remain.
        assert not [task for task in leftover if "LinkEmulator" in repr(task.get_coro())], leftover
        assert await asyncio.wait_for(reader.read(1), 5.0) == b""
        writer.close()
        upstream.close()
        await upstream.wait_closed()
        assert not errors, errors  # e.g. a cancelled handler that asyncio's stream callback trips over

    asyncio.run(asyncio.wait_for(scenario(), 15.0))


# -- (e) validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"one_way_delay_ms": -1}, "one_way_delay_ms must be >= 0"),
        ({"one_way_delay_ms": float("nan")}, "one_way_delay_ms must be a finite number"),
        ({"jitter_ms": -0.5}, "jitter_ms must be >= 0"),
        ({"bandwidth_mbit": 0}, r"bandwidth_mbit must be > 0"),
        ({"bandwidth_mbit": -3}, r"bandwidth_mbit must be > 0"),
        ({"loss": 1.5}, r"loss is a probability and must be in \[0, 1\]"),
        ({"loss": -0.1}, r"loss is a probability"),
        ({"loss_penalty_ms": -1}, "loss_penalty_ms must be >= 0"),
        ({"one_way_delay_ms": True}, "one_way_delay_ms must be a finite number"),
    ],
)
def test_profile_validation_errors_are_clear(kwargs: dict[str, float], message: str) -> None:
    fields = {"name": "bad", "one_way_delay_ms": 1.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        LinkProfile(**fields)  # type: ignore[arg-type]


def test_resolve_profile_names_and_overrides() -> None:
    assert resolve_profile("wan") is PROFILES["wan"]
    assert PROFILES["wan"].rtt_ms == 50.0 and PROFILES["wan"].bandwidth_mbit == 20.0
    assert PROFILES["cellular"].jitter_ms == 15.0 and PROFILES["cellular"].loss == 0.0
    custom = resolve_profile("cellular", {"delay_ms": 30, "jitter_ms": None, "bandwidth_mbit": 0, "loss": 0.01})
    assert (custom.one_way_delay_ms, custom.jitter_ms, custom.bandwidth_mbit, custom.loss) == (30, 15.0, None, 0.01)
    assert custom.name.startswith("cellular[")
    with pytest.raises(ValueError, match="unknown link profile 'moon'; choose one of: lan, wan, cellular"):
        resolve_profile("moon")
    with pytest.raises(ValueError, match="unknown link override 'latency'"):
        resolve_profile("lan", {"latency": 3})
    with pytest.raises(ValueError, match="jitter_ms must be >= 0"):
        resolve_profile("lan", {"jitter_ms": -2})


def test_command_parser() -> None:
    parser = argparse.ArgumentParser()
    add_link_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["link", "--listen", "0", "--upstream", "[::1]:50051", "--profile", "wan", "--loss", "0.1"]
    )
    assert args.upstream == ("::1", 50051) and args.profile == "wan" and args.loss == 0.1
    assert callable(args.handler)
    for bad in ("50051", "host:", "host:70000", ":1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_host_port(bad)


def test_link_command_runs_until_sigterm() -> None:
    with upstream_server() as server:
        with socket.socket() as probe:  # a free port; the tiny race with other processes is acceptable
            probe.bind((HOST, 0))
            listen = probe.getsockname()[1]
        code = (
            "import argparse, logging, sys\n"
            "from edgespec.cli.link import add_link_parser\n"
            "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
            "p = argparse.ArgumentParser(); add_link_parser(p.add_subparsers(dest='c', required=True))\n"
            "a = p.parse_args(sys.argv[1:]); sys.exit(a.handler(a))\n"
        )
        argv = [
            sys.executable,
            "-c",
            code,
            "link",
            "--listen",
            str(listen),
            "--upstream",
            f"{HOST}:{server.server_address[1]}",
            "--profile",
            "lan",
            "--delay-ms",
            "2",
        ]
        process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            sock = _connect_with_retry(listen, process, deadline_s=10.0)
            with sock:
                assert ping_ms(sock) >= 4.0 - 0.1
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=10.0)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(5.0)
    assert process.returncode == 0, stderr
    assert "lan[one_way_delay_ms=2]: 2 ms one-way" in stderr
    assert "1 connections, 32 bytes up, 32 bytes down" in stderr


def _connect_with_retry(port: int, process: subprocess.Popen[str], deadline_s: float) -> socket.socket:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return connect(port)
        except ConnectionRefusedError:
            if process.poll() is not None:
                raise AssertionError(f"edgespec link exited early: {process.communicate()[1]}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# -- (f) reproducibility and the model itself -----------------------------------------------


def _schedule(profile: LinkProfile, seed: int, count: int = 50) -> list[float]:
    model = LinkModel(profile, direction_rng(seed, connection=0, direction="up"))
    return [model.schedule(now=i * 0.001, nbytes=100) for i in range(count)]


def test_same_seed_gives_the_same_jitter_sequence() -> None:
    profile = PROFILES["cellular"]
    assert _schedule(profile, seed=5) == _schedule(profile, seed=5)
    assert _schedule(profile, seed=5) != _schedule(profile, seed=6)
    # Directions and connections draw from separate streams.
    up = LinkModel(profile, direction_rng(5, 0, "up"))
    down = LinkModel(profile, direction_rng(5, 0, "down"))
    assert [up.schedule(0, 1) for _ in range(5)] != [down.schedule(0, 1) for _ in range(5)]


def test_model_keeps_fifo_and_bounds() -> None:
    profile = LinkProfile("wild", one_way_delay_ms=50, jitter_ms=50, bandwidth_mbit=8, loss=0.2, loss_penalty_ms=100)
    model = LinkModel(profile, random.Random(0))
    times = [model.schedule(now=i * 0.0001, nbytes=1000) for i in range(500)]
    assert times == sorted(times)  # TCP never reorders
    for i, deliver in enumerate(times):
        # Serialization of everything so far, then at least zero propagation.
        assert deliver >= (i + 1) * 1000 * 8 / 8e6 - 1e-12
    assert model.loss_events > 0


def test_model_serializes_and_holds() -> None:
    model = LinkModel(LinkProfile("cap", one_way_delay_ms=10, bandwidth_mbit=8), random.Random(0))
    model.hold(1.0)
    assert model.schedule(now=0.0, nbytes=1000) == pytest.approx(1.0 + 0.001 + 0.010)
    assert model.schedule(now=0.0, nbytes=1000) == pytest.approx(1.0 + 0.002 + 0.010)
    assert model.schedule(now=5.0, nbytes=0) == pytest.approx(5.010)
