"""The machine a figure came from: CPU model, native bf16 (AVX512-BF16, AMX), torch's CPU
capability, cores, threads per process, and the dtypes actually run."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.split(":", 1)[1].split()) if ":" in line else set()


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), platform.processor() or platform.machine())


def host_facts(threads_per_process: int = 1, dtype: str | None = None, draft_dtype: str | None = None) -> dict[str, Any]:
    """``dtype``: the target's dtype as run (after ``auto`` was resolved); ``draft_dtype``: the
    edge draft's (a GGUF quantisation on llama.cpp, or a torch dtype)."""
    flags = cpu_flags()
    facts: dict[str, Any] = {
        "cpu": cpu_model(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "native_bf16": "avx512_bf16" in flags or "amx_bf16" in flags,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_version": torch.__version__,
        "cores": os.cpu_count(),
        "threads_per_process": threads_per_process,
    }
    if dtype is not None:
        facts["dtype"] = dtype
    if draft_dtype is not None:
        facts["draft_dtype"] = draft_dtype
    return facts
