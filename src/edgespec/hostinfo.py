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
    return next(
        (line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
        platform.processor() or platform.machine(),
    )


def cpu_family_model() -> str:
    """e.g. "family 25 model 17" (AMD Zen 4): where a virtual machine names only "AMD EPYC", this
    says which generation it is."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("cpu family", "model") and key not in fields:
            fields[key] = value.strip()
        if not line.strip():
            break
    return f"family {fields['cpu family']} model {fields['model']}" if len(fields) == 2 else ""


def host_facts(
    threads_per_process: int = 1, dtype: str | None = None, draft_dtype: str | None = None
) -> dict[str, Any]:
    """``dtype``: the target's dtype as run (after ``auto`` was resolved); ``draft_dtype``: the
    edge draft's (a GGUF quantisation on llama.cpp, or a torch dtype)."""
    flags = cpu_flags()
    facts: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_family_model": cpu_family_model(),
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
