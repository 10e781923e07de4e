"""`edgespec link`: run the link emulator as a process of its own, until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

from edgespec.link.profiles import PROFILES, LinkProfile, resolve_profile
from edgespec.link.proxy import LinkEmulator

__all__ = ["add_link_parser", "run_link", "parse_host_port"]

logger = logging.getLogger(__name__)


def add_link_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `link` to an `add_subparsers()` object; returns the new parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "link",
        help="TCP proxy that emulates a network link (delay, jitter, bandwidth, loss)",
        description="Relay TCP connections to an upstream through an emulated link, both directions "
        "shaped alike. Loss is modelled as delay (a retransmission), never as dropped bytes.",
    )
    parser.add_argument(
        "--listen",
        type=_port,
        required=True,
        metavar="PORT",
        help="port to listen on (0: any free port)",
    )
    parser.add_argument(
        "--listen-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address to listen on (default 127.0.0.1)",
    )
    parser.add_argument(
        "--upstream",
        type=parse_host_port,
        required=True,
        metavar="HOST:PORT",
        help="where to relay connections",
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="lan", help="base link profile (default lan)")
    parser.add_argument("--delay-ms", type=float, metavar="X", help="one-way delay, overrides the profile")
    parser.add_argument(
        "--jitter-ms",
        type=float,
        metavar="X",
        help="± one-way jitter (uniform), overrides the profile",
    )
    parser.add_argument("--bandwidth-mbit", type=float, metavar="X", help="cap per direction in Mbit/s (0: no cap)")
    parser.add_argument("--loss", type=float, metavar="P", help="probability a chunk needs a retransmission")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="seed for jitter and loss (default 0)")
    parser.set_defaults(handler=run_link)
    return parser


def parse_host_port(text: str) -> tuple[str, int]:
    """`host:port` or `[v6-address]:port`."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, _port(port, allow_zero=False)


def _port(text: str, allow_zero: bool = True) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be an integer, got {text!r}") from None
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in {low}..65535, got {port}")
    return port


def profile_from_args(args: argparse.Namespace) -> LinkProfile:
    return resolve_profile(
        args.profile,
        {
            "delay_ms": args.delay_ms,
            "jitter_ms": args.jitter_ms,
            "bandwidth_mbit": args.bandwidth_mbit,
            "loss": args.loss,
        },
    )


def run_link(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM; ValueError for a bad profile, OSError if the port is taken."""
    profile = profile_from_args(args)
    host, port = args.upstream
    emulator = LinkEmulator(host, port, profile, listen_host=args.listen_host, listen_port=args.listen, seed=args.seed)
    asyncio.run(_serve_until_signalled(emulator))
    stats = emulator.stats
    logger.info(
        "link closed: %d connections, %d bytes up, %d bytes down, %d loss events",
        stats.connections,
        stats.bytes_up,
        stats.bytes_down,
        stats.loss_events,
    )
    return 0


async def _serve_until_signalled(emulator: LinkEmulator) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        port = await emulator.start()
        logger.info("link listening on %s:%d, profile %s", emulator.listen_host, port, emulator.profile.describe())
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await emulator.stop()
