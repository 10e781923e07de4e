"""Every command's `--help` ends with examples a user can copy.

They live in one table, keyed by the command's words, rather than beside each parser: one place to
read them all, and `tests/cli/test_cli_examples.py` parses every line with the real parser, so an
example that names a flag the command no longer has fails the suite. `attach_examples` walks the
finished parser tree and gives each parser its examples and a formatter that prints them as
written.
"""

from __future__ import annotations

import argparse

__all__ = ["EXAMPLES", "ExamplesHelpFormatter", "attach_examples"]

# Command words -> example command lines, each a complete `edgespec ...` call.
EXAMPLES: dict[tuple[str, ...], tuple[str, ...]] = {
    (): (
        "edgespec models fetch qwen2.5-coder-0.5b",
        "edgespec generate --local --mode sd-ee-pipelined --link wan 'Write a quicksort in Python.'",
        "edgespec serve --target qwen2.5-coder-1.5b --port 50051",
    ),
    ("models",): ("edgespec models list", "edgespec models fetch qwen2.5-coder-1.5b"),
    ("models", "list"): ("edgespec models list",),
    ("models", "fetch"): ("edgespec models fetch qwen2.5-coder-1.5b", "edgespec models fetch smollm2-135m"),
    ("models", "path"): ("edgespec models path qwen2.5-coder-0.5b",),
    ("generate",): (
        "edgespec generate --server 127.0.0.1:50051 --draft qwen2.5-coder-0.5b --mode sd-ee-pipelined "
        "'Write a quicksort in Python.'",
        "edgespec generate --local --target smollm2-135m --draft smollm2-135m --max-new-tokens 32 --json 'Hi'",
    ),
    ("serve",): (
        "edgespec serve --target qwen2.5-coder-1.5b --port 50051",
        "edgespec serve --target qwen2.5-coder-1.5b --device cuda --dtype bfloat16 --host 0.0.0.0 "
        "--auth-token-file token --tls-cert cert.pem --tls-key key.pem",
    ),
    ("link",): (
        "edgespec link --listen 50052 --upstream 127.0.0.1:50051 --profile wan",
        "edgespec link --listen 50052 --upstream 127.0.0.1:50051 --delay-ms 40 --jitter-ms 10 --bandwidth-mbit 5",
    ),
    ("edge-serve",): (
        "edgespec edge-serve --server 127.0.0.1:50051 --draft qwen2.5-coder-0.5b --mode sd-ee-pipelined "
        "--port 8000 --api-key-file local.key",
    ),
    ("bench",): (
        "edgespec bench --profiles lan,wan --prompts mtbench,humaneval --num-prompts 10 --out out/bench",
        "edgespec bench --clients 1,2,4,8 --modes cloud-ar,sd --profiles wan --out out/bench-capacity",
    ),
    ("trace",): ("edgespec trace --prompts sharegpt --num-prompts 6 --max-new-tokens 64 --out out/traces",),
    ("simulate",): (
        "edgespec simulate --traces out/traces --hardware host --profiles lan,wan,cellular --out out/sim",
        "edgespec simulate --traces out/traces --hardware h200 --profiles wan --clients 1,8,32 --out out/sim-h200",
    ),
    ("train-exits",): (
        "edgespec train-exits --dtype bfloat16 --layers 14,18,21,24 --sequences 64 --out out/exits/selfdistill",
    ),
    ("eval-exits",): (
        "edgespec eval-exits --exits out/exits/selfdistill --calibrate --threshold-rule gain --report out/exits/report",
    ),
    ("robot",): (
        "edgespec robot --task 'walk to the red box' --local --mode sd --max-steps 8 --out out/robot/sd",
        "edgespec robot --compare cloud-ar,sd,sd-ee-pipelined --profile wan --max-steps 8 --out out/robot",
    ),
    ("robot-reuse",): ("edgespec robot-reuse --where local --mode sd --steps 4",),
    ("profile",): ("edgespec profile engine --engine llamacpp --threads 1", "edgespec profile ops"),
    ("profile", "batched"): (
        "edgespec profile batched --config /models/Qwen2.5-Coder-1.5B --gammas 0,4,8 --batches 1,8,32 --out costs.json",
    ),
    ("profile", "passes"): ("edgespec profile passes --target qwen2.5-coder-1.5b --repeats 3",),
    ("profile", "exits"): ("edgespec profile exits --exits logit-lens:14,21 --repeats 3",),
    ("profile", "ops"): ("edgespec profile ops --sessions 8",),
    ("profile", "engine"): ("edgespec profile engine --engine transformers --dtype bfloat16 --block 5 --sessions 4",),
    ("exit-hit-rate",): ("edgespec exit-hit-rate --per-set 4 --max-new-tokens 64 --out out/hit-rate",),
}

EPILOG_TITLE = "examples:"


class ExamplesHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Wraps the description as argparse always has, but prints the examples line for line."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith(EPILOG_TITLE):
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)


def attach_examples(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()) -> None:
    """Give `parser` and every parser below it its examples. A command missing from the table still
    works (its help just has none); the test suite fails on it."""
    if words in EXAMPLES:
        parser.epilog = EPILOG_TITLE + "".join(f"\n  {line}" for line in EXAMPLES[words])
    parser.formatter_class = ExamplesHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub_parser in action.choices.items():
                attach_examples(sub_parser, words + (name,))
