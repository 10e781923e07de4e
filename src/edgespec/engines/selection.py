"""Which engine serves a target (``serve --engine auto|llamacpp|paged|transformers``), and loading the
llama.cpp one with what a server needs beside it (tokenizer, end-of-sequence ids).

``auto``: with no exits asked for, a GGUF target (a preset or a ``.gguf`` file) on the CPU runs on
llama.cpp, the engine a CPU user would run for it, and any target on an accelerator runs on the
paged engine (one paged KV pool, packed passes, captured graphs); exits, and an HF directory on
the CPU, run on eager `transformers` (neither llama.cpp nor the paged engine gives early verdicts).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from edgespec.engines.interface import ENGINE_NAMES
from edgespec.engines.llamacpp import LlamaCppEngine
from edgespec.engines.llamacpp_context import ContextSettings
from edgespec.models.loading import resolve_model_source

logger = logging.getLogger(__name__)

# Tokens one llama.cpp session may hold unless told otherwise: the context is allocated up front
# for every session, so it is sized for the benchmark's prompts, not for the model's whole window.
DEFAULT_SESSION_CONTEXT = 2048


def is_gguf_target(target: str) -> bool:
    """Whether ``target`` names a GGUF file (every preset is one)."""
    return resolve_model_source(target).kind in ("preset", "gguf")


def choose_engine(requested: str, target: str, device: str = "cpu", exits: str = "none") -> str:
    """The engine ``requested`` means for this target, device and ``--exits``: "llamacpp", "paged"
    or "transformers" (ValueError for an unknown name or a combination that cannot run)."""
    if requested not in ENGINE_NAMES:
        raise ValueError(f"--engine must be one of {', '.join(ENGINE_NAMES)}, got {requested!r}")
    if requested in ("transformers", "paged"):
        return requested
    gguf = is_gguf_target(target)
    if requested == "llamacpp":
        if not gguf:
            raise ValueError("the llama.cpp engine reads GGUF files: pass a preset or a .gguf path as --target")
        if device != "cpu":
            raise ValueError("the llama.cpp engine runs on the CPU here: use --device cpu or --engine transformers")
        return requested
    if exits != "none":
        return "transformers"
    if device == "cpu":
        return "llamacpp" if gguf else "transformers"
    return "paged" if device.startswith("cuda") else "transformers"


def gguf_file(target: str) -> Path:
    """The verified GGUF file of a preset or ``.gguf`` path."""
    from edgespec.models.fetch import gguf_path

    source = resolve_model_source(target)
    if source.preset is not None:
        return gguf_path(source.preset)
    if source.kind != "gguf" or source.path is None:
        raise ValueError(f"{target} is not a GGUF file")
    return source.path


def load_llamacpp_engine(
    target: str, sessions: int, session_context: int = DEFAULT_SESSION_CONTEXT, threads: int = 0
) -> LlamaCppEngine:
    """The target's own GGUF on llama.cpp, with a sequence for each of ``sessions`` sessions (and
    one for the engine's own use). ``threads`` 0: every core."""
    settings = ContextSettings(
        sequences=sessions + 1,
        context_per_sequence=session_context,
        threads=threads or (os.cpu_count() or 1),
    )
    return LlamaCppEngine(gguf_file(target), settings)


def tokenizer_and_eos(target: str) -> tuple[Any, frozenset[int]]:
    """The target's tokenizer and the ids that end its generation, without loading its weights
    into `transformers` (they come from the converted checkpoint's configuration files)."""
    from transformers import GenerationConfig

    from edgespec.models.loading import converted_dir, load_tokenizer
    from edgespec.prompting import eos_token_ids

    tokenizer = load_tokenizer(target)
    try:
        generation = GenerationConfig.from_pretrained(converted_dir(target))
    except OSError:  # no generation_config.json: the tokenizer's EOS decides
        generation = None

    class _Config:
        generation_config = generation

    return tokenizer, eos_token_ids(_Config(), tokenizer)
