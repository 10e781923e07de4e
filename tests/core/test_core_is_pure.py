"""The round core imports only the standard library: every module of ``edgespec.core``, imported
in a fresh interpreter, leaves no tensor, numeric, network or event-loop library loaded."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import edgespec
import edgespec.core

FORBIDDEN = ("torch", "transformers", "numpy", "grpc", "asyncio")

PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(%r))))
""" % (FORBIDDEN,)


def core_modules() -> list[str]:
    return ["edgespec.core"] + [f"edgespec.core.{m.name}" for m in pkgutil.iter_modules(edgespec.core.__path__)]


def test_every_core_module_imports_with_the_standard_library_alone() -> None:
    modules = core_modules()
    assert {"edgespec.core.edge", "edgespec.core.verifier", "edgespec.core.colocated", "edgespec.core.cloud_ar"} <= set(
        modules
    )
    source_root = str(Path(edgespec.__file__).resolve().parent.parent)  # this checkout's, not an installed copy
    probe = f"import sys; sys.path.insert(0, {source_root!r})\n" + PROBE
    done = subprocess.run([sys.executable, "-c", probe, *modules], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
