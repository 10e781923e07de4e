"""Resolve a model name or path, convert GGUF weights once, and load them with transformers.

GGUF loading in transformers dequantises every tensor on each load (slow), so a GGUF is
converted once into an fp32 safetensors checkpoint under the edgespec cache and every later load
reads that. fp32 keeps the dequantised weights exact, so the fp32 oracle matches the GGUF and a
bf16 load is a plain cast of the same numbers.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edgespec.models.fetch import cache_root, file_sha256, gguf_path
from edgespec.models.presets import PRESETS, ModelPreset

logger = logging.getLogger(__name__)

SourceKind = Literal["preset", "gguf", "hf_dir"]

DTYPES = ("bfloat16", "float32")
DTYPE_CHOICES = ("auto", *DTYPES)


def resolve_dtype(dtype: str) -> str:
    """``auto``: bfloat16 where the CPU computes it natively (AVX512-BF16 / AMX), else float32.

    On a CPU without native bf16 (AVX2 only) PyTorch emulates it and bf16 runs *slower* than
    fp32.
    """
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {dtype!r}")
        return dtype
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "float32"
    return "bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


CONVERSION_MARKER = "edgespec-conversion.json"
# Bump when the conversion recipe changes so old caches are not reused.
CONVERSION_VERSION = 1

# Special tokens that end an assistant turn in common chat templates. A generation that emits one
# of them is finished, so each present in the vocabulary joins the eos set.
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "<|end|>", "</s>")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a preset, a local GGUF file, or a local HF model directory."""

    name: str
    kind: SourceKind
    path: Path | None = None  # GGUF file or HF dir; None for presets (resolved when fetched)
    preset: ModelPreset | None = None


@dataclass(frozen=True)
class LoadedModel:
    model: Any  # transformers PreTrainedModel, eval mode, no grads
    tokenizer: Any  # transformers tokenizer with its chat template
    name: str
    dtype: str
    path: Path | None = None  # directory the weights were loaded from


def _unknown(name_or_path: object) -> ValueError:
    return ValueError(
        f"unknown model {str(name_or_path)!r}: expected a preset name ({', '.join(sorted(PRESETS))}), "
        "a directory containing config.json, or a .gguf file"
    )


def resolve_model_source(name_or_path: str | os.PathLike[str]) -> ModelSource:
    """Classify a preset name, local HF directory (has config.json), or local ``.gguf`` file."""
    if isinstance(name_or_path, str) and name_or_path in PRESETS:
        return ModelSource(name=name_or_path, kind="preset", preset=PRESETS[name_or_path])
    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return ModelSource(name=path.resolve().name, kind="hf_dir", path=path.resolve())
    if path.is_file() and path.suffix.lower() == ".gguf":
        return ModelSource(name=path.stem, kind="gguf", path=path.resolve())
    raise _unknown(name_or_path)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


# --------------------------------------------------------------------------- GGUF conversion


def gguf_chat_template(gguf_file: Path) -> str | None:
    """``tokenizer.chat_template`` from a GGUF's metadata, if it has one."""
    from gguf import GGUFReader

    field = GGUFReader(gguf_file).fields.get("tokenizer.chat_template")
    if field is None or not field.data:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def _special_token_id(tokenizer: Any, token: str) -> int | None:
    # Only added/special tokens count: a plain vocabulary piece that happens to spell "</s>" is
    # not a stop signal.
    for token_id, added in tokenizer.added_tokens_decoder.items():
        if added.content == token:
            return int(token_id)
    return None


def _as_list(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _fix_special_tokens(model: Any, tokenizer: Any, gguf_file: Path) -> None:
    """Make the chat template, eos set and pad id usable for chat generation."""
    if not tokenizer.chat_template:
        template = gguf_chat_template(gguf_file)
        if template:
            logger.info("restoring chat template from GGUF metadata of %s", gguf_file.name)
            tokenizer.chat_template = template
        else:
            logger.warning("%s has no chat template", gguf_file.name)

    eos_ids = _as_list(tokenizer.eos_token_id) + _as_list(model.generation_config.eos_token_id)
    eos_ids += _as_list(model.config.eos_token_id)
    for token in _END_OF_TURN_TOKENS:
        token_id = _special_token_id(tokenizer, token)
        if token_id is not None:
            eos_ids.append(token_id)
    eos_ids = list(dict.fromkeys(eos_ids))  # dedupe, keep the tokenizer's own eos first

    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = eos_ids[0] if eos_ids else None
        if pad_id is not None:
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)

    gen = model.generation_config
    gen.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    gen.pad_token_id = pad_id
    if tokenizer.bos_token_id is not None:
        gen.bos_token_id = tokenizer.bos_token_id
    # Greedy by default: speculative decoding is verified against the target's greedy output.
    gen.do_sample = False
    for attr in ("temperature", "top_p", "top_k"):
        if hasattr(gen, attr):
            setattr(gen, attr, None)
    model.config.pad_token_id = pad_id
    logger.info("eos ids %s, pad id %s", eos_ids, pad_id)


def _load_dense_from_gguf(gguf_file: Path) -> Any:
    """Dense fp32 transformers model from a GGUF, with nothing left of the GGUF quantizer.

    transformers attaches a GGUF "quantizer" even when it dequantises every tensor, and refuses to
    ``save_pretrained`` while it is attached. We ask for full dequantisation (so architectures
    with packed-kernel support also come out dense), check that nothing stayed packed, and detach.
    """
    import torch
    from transformers import AutoModelForCausalLM, GgufConfig

    model = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent,
        gguf_file=gguf_file.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        if getattr(quantizer, "packed_modules", None):
            raise RuntimeError(f"{gguf_file.name}: transformers kept some weights packed; cannot save them dense")
        quantizer.remove_quantization_config(model)
    not_float = [n for n, p in model.named_parameters() if p.dtype != torch.float32]
    if not_float:
        raise RuntimeError(f"{gguf_file.name}: parameters not dequantised to float32: {not_float[:5]}")
    return model


def _convert_gguf(gguf_file: Path, out_dir: Path, name: str, sha256: str) -> None:
    from transformers import AutoTokenizer

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    start = time.perf_counter()
    logger.info("converting %s to safetensors in %s (once; may take minutes)", gguf_file, out_dir)
    try:
        model = _load_dense_from_gguf(gguf_file)
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        _fix_special_tokens(model, tokenizer, gguf_file)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del model
        marker = {
            "name": name,
            "gguf_file": str(gguf_file),
            "gguf_sha256": sha256,
            "gguf_quant_types": gguf_quant_types(gguf_file),
            "conversion_version": CONVERSION_VERSION,
        }
        (tmp / CONVERSION_MARKER).write_text(json.dumps(marker, indent=2))
        for file in tmp.iterdir():
            file.chmod(0o644)  # safetensors writes 0600; a shared cache must stay readable
        if out_dir.exists():
            if (out_dir / CONVERSION_MARKER).is_file():
                logger.info("%s was converted concurrently; keeping that copy", out_dir)
                shutil.rmtree(tmp, ignore_errors=True)
                return
            shutil.rmtree(out_dir)  # left by an interrupted conversion that predates the marker scheme
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("converted %s in %.1f s", name, time.perf_counter() - start)


def gguf_quant_types(gguf_file: Path) -> dict[str, int]:
    """Tensor count per GGML quantisation type in a GGUF (e.g. ``{"Q4_K": 168, "F32": 121}``)."""
    from gguf import GGUFReader

    counts: dict[str, int] = {}
    for tensor in GGUFReader(gguf_file).tensors:
        key = tensor.tensor_type.name
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _conversion_complete(out_dir: Path) -> bool:
    marker = out_dir / CONVERSION_MARKER
    try:
        return json.loads(marker.read_text()).get("conversion_version") == CONVERSION_VERSION
    except (OSError, ValueError, AttributeError):
        return False


def converted_dir(name_or_path: str | os.PathLike[str]) -> Path:
    """Directory of a transformers checkpoint for the model, converting a GGUF on first use.

    HF directories are returned as they are. GGUF models go to
    ``cache_root()/converted/<name>-<sha256[:12]>/``, keyed by content so a changed file converts
    anew.
    """
    source = resolve_model_source(name_or_path)
    if source.kind == "hf_dir":
        assert source.path is not None
        return source.path
    if source.kind == "preset":
        assert source.preset is not None
        gguf_file = gguf_path(source.preset)
        sha256 = source.preset.gguf_sha256
    else:
        assert source.path is not None
        gguf_file = source.path
        sha256 = file_sha256(gguf_file)
    out_dir = cache_root() / "converted" / f"{_slug(source.name)}-{sha256[:12]}"
    if not _conversion_complete(out_dir):
        _convert_gguf(gguf_file, out_dir, source.name, sha256)
    return out_dir


# --------------------------------------------------------------------------- loading


def load_model(name_or_path: str | os.PathLike[str], dtype: str = "bfloat16") -> LoadedModel:
    """Load a preset, GGUF file or HF directory for inference (eval mode, no grads)."""
    dtype = resolve_dtype(dtype)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model_source(name_or_path)
    model_dir = converted_dir(name_or_path)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    model.eval()
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    logger.info("loaded %s (%s) from %s in %.1f s", source.name, dtype, model_dir, time.perf_counter() - start)
    return LoadedModel(model=model, tokenizer=tokenizer, name=source.name, dtype=dtype, path=model_dir)


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> Any:
    """Just the tokenizer (an edge client in cloud-ar mode needs no draft weights)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(converted_dir(name_or_path))


DRAFT_BACKENDS = ("transformers", "llamacpp")


def load_draft(
    name_or_path: str | os.PathLike[str], backend: str = "transformers", dtype: str = "auto", threads: int = 1
) -> tuple[Any, Any]:
    """(draft runtime, tokenizer) on the chosen backend; llama.cpp reads the GGUF directly."""
    from edgespec.models.draft import DraftRuntime

    if backend == "transformers":
        loaded = load_model(name_or_path, dtype)
        return DraftRuntime(loaded.model), loaded.tokenizer
    if backend != "llamacpp":
        raise ValueError(f"draft backend must be one of {', '.join(DRAFT_BACKENDS)}, got {backend!r}")
    from edgespec.models.llamacpp_draft import LlamaCppDraft

    source = resolve_model_source(name_or_path)
    if source.kind == "hf_dir":
        raise ValueError(
            "the llama.cpp backend reads GGUF files: pass a preset or a .gguf path, not a Hugging Face directory"
        )
    gguf_file = gguf_path(source.preset) if source.preset is not None else source.path
    return LlamaCppDraft(gguf_file, threads=threads), load_tokenizer(name_or_path)
