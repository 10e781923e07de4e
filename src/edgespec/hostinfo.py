"""The machine a figure came from: CPU model, native bf16, torch's CPU capability, cores."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch


def host_facts() -> dict[str, Any]:
    flags = ""
    model = platform.processor()
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), model)
        flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    except OSError:
        pass
    return {
        "cpu": model,
        "native_bf16": "avx512_bf16" in flags or "amx_bf16" in flags,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "threads_per_process": 1,
    }
