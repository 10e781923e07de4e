"""The round-policy options every command that runs rounds takes (`generate`, `bench`,
`simulate`), defined once so their names, defaults and help stay the same everywhere."""

from __future__ import annotations

import argparse

from edgespec.core.config import GenerationConfig

_DEFAULTS = GenerationConfig()


def add_round_policy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--branches", type=int, default=_DEFAULTS.branches, help="pre-draft modes: branches per round, each on one assumed verdict")
    parser.add_argument(
        "--early-verdicts", choices=["auto", "on", "off"], default="auto",
        help="pre-draft modes: ask the server to run its exits (auto: only where nothing else gives a verdict to pre-draft on)",
    )
    parser.add_argument(
        "--no-guess", action="store_true",
        help="pre-draft modes: pre-draft on early verdicts only (the paper's method), not on the draft's own guess at send time",
    )
    parser.add_argument(
        "--runner-up", action="store_true",
        help="pre-draft modes: also draft runner-up branches (a rejection where the draft was least sure, corrected to its "
        "runner-up) in the branches the guess leaves; pays where the edge has its own memory (README)",
    )
    parser.add_argument(
        "--draft-stop", type=float, default=_DEFAULTS.draft_stop,
        help="greedy: end a block after a token the draft gives less than this probability (a dynamic draft length; 0: always the full gamma)",
    )
