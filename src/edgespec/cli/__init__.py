"""The `edgespec` command line: parse into configs, call the library, print results.

One module per command (each with its `add_*_parser` and handler), the options several commands
share in `options.py`. Nothing in the library imports this package.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

# gRPC's core logs connection events (a server's GOAWAY during an outage) at INFO straight to
# stderr; the client reports outages itself. Set before anything loads grpc; a user's own wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from edgespec import __version__  # noqa: E402
from edgespec.cli.bench import add_bench_parser  # noqa: E402
from edgespec.cli.edge_serve import add_edge_serve_parser  # noqa: E402
from edgespec.cli.eval_exits import add_eval_exits_parser  # noqa: E402
from edgespec.cli.examples import attach_examples  # noqa: E402
from edgespec.cli.exit_hit_rate import add_exit_hit_rate_parser  # noqa: E402
from edgespec.cli.generate import add_generate_parser  # noqa: E402
from edgespec.cli.link import add_link_parser  # noqa: E402
from edgespec.cli.models import add_models_parser  # noqa: E402
from edgespec.cli.profile import add_profile_parser  # noqa: E402
from edgespec.cli.robot import add_robot_parser  # noqa: E402
from edgespec.cli.robot_reuse import add_robot_reuse_parser  # noqa: E402
from edgespec.cli.serve import add_serve_parser  # noqa: E402
from edgespec.cli.simulate import add_simulate_parser  # noqa: E402
from edgespec.cli.trace import add_trace_parser  # noqa: E402
from edgespec.cli.train_exits import add_train_exits_parser  # noqa: E402

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO if args.log else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command != "link":
        _quiet_transformers()
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        # Ctrl-C: the generation was cancelled and cleaned up; a traceback would only be noise.
        print("\nedgespec: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        # Library errors are written for people; a traceback would only hide the message.
        print(f"edgespec: error: {error}", file=sys.stderr)
        if args.verbose:
            raise
        return 2


def _quiet_transformers() -> None:
    # Its per-load "Loading weights" bars would interleave with our own output.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgespec", description="Speculative edge-cloud decoding with early exits.")
    parser.add_argument("--version", action="version", version=f"edgespec {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    parser.add_argument("--log", action="store_true", help="info logging")
    commands = parser.add_subparsers(dest="command", required=True)
    # The order `edgespec --help` lists them in.
    add_models_parser(commands)
    add_generate_parser(commands)
    add_serve_parser(commands)
    add_link_parser(commands)
    add_edge_serve_parser(commands)
    add_bench_parser(commands)
    add_trace_parser(commands)
    add_simulate_parser(commands)
    add_train_exits_parser(commands)
    add_eval_exits_parser(commands)
    add_robot_parser(commands)
    add_robot_reuse_parser(commands)
    add_profile_parser(commands)
    add_exit_hit_rate_parser(commands)
    attach_examples(parser)
    return parser
