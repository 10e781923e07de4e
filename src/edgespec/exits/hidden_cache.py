"""The frozen target, run once: hidden states at candidate exit layers, cached on disk.

Two kinds of record, both as safetensors shards in one directory, both resumable (a shard is
written atomically and a restart skips the sources already covered by complete shards):

* **Training cache** (``build_training_cache``, here): every position of each training sequence
  (ShareGPT conversations, optionally followed by the target's own greedy continuation of the
  first user turn). Per position: the hidden state after each candidate exit layer (``h.<L>``),
  the final normed hidden state (``final``: the frozen LM head turns it into the final logits
  over any vocabulary subset) and the final layer's top-k ids (``topk_ids``), all fp16 / int32.

* **Speculative rounds** (``edgespec.exits.recorded_rounds``): real greedy speculative decoding
  with the real draft, recorded with the shard, manifest and layer-tap helpers of this module.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from edgespec.models.target import TargetRuntime, decoder_parts

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write a shard under a temporary name, then rename it: a killed run leaves no partial shard
    for a resumed one to trust."""
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Replace the manifest atomically, for the same reason as ``save_atomic``."""
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, directory / MANIFEST)


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no cache manifest at {path}")
    return json.loads(path.read_text())


def shard_paths(directory: str | Path) -> list[Path]:
    return sorted(Path(directory).glob("shard-*.safetensors"))


class LayerTap:
    """Forward hooks that copy the last ``tail`` positions' hidden states after chosen decoder
    layers, and the final normed hidden state, while ``armed``. Reads only: the forward is unchanged."""

    def __init__(self, model: nn.Module, layers: Sequence[int]) -> None:
        decoder_layers, norm, _ = decoder_parts(model)
        self.layers = tuple(layers)
        self.tail = 1
        self.armed = False
        self.captured: dict[str, torch.Tensor] = {}
        self._hooks = [
            decoder_layers[layer - 1].register_forward_hook(self._hook(f"h.{layer}")) for layer in self.layers
        ]
        self._hooks.append(norm.register_forward_hook(self._hook("final")))

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if self.armed:
                hidden = output[0] if isinstance(output, tuple) else output
                self.captured[name] = hidden[0, -self.tail :, :].detach().float().clone()

        return hook

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


def _hidden_dtype(tensor: torch.Tensor) -> torch.Tensor:
    """fp16 when it represents the values (hidden states can carry large outliers), else fp32."""
    if float(tensor.abs().max()) < 6.0e4:
        return tensor.half()
    return tensor.float()


# --------------------------------------------------------------------------- training cache


@torch.inference_mode()
def greedy_continuation(
    model: nn.Module, prompt: Sequence[int], max_new_tokens: int, eos_ids: Iterable[int] = ()
) -> list[int]:
    """The target's own greedy continuation of ``prompt`` (what verification sees it produce)."""
    runtime = TargetRuntime(model)
    sequence = list(prompt)
    stop = set(eos_ids)
    for _ in range(max_new_tokens):
        token = int(torch.argmax(runtime.score_tail(sequence, 1)[0]))
        sequence.append(token)
        if token in stop:
            break
    return sequence[len(prompt) :]


@dataclass(frozen=True)
class CacheSource:
    id: str
    kind: str  # "sharegpt" | "continuation"
    make: Callable[[], list[int]]  # lazily: a resumed run skips done sources without computing them


def sharegpt_sources(
    model: nn.Module,
    tokenizer: Any,
    split: str = "train",
    max_tokens: int = 256,
    continuation_every: int = 0,
    continuation_tokens: int = 128,
    eos_ids: Iterable[int] = (),
) -> Iterator[CacheSource]:
    """ShareGPT conversations as cache sources; with ``continuation_every = n`` every n-th one is
    instead its first user turn followed by the target's own greedy continuation."""
    from edgespec.data.sharegpt import iter_conversations, render_conversation, render_first_prompt

    eos = tuple(eos_ids)
    for number, conversation in enumerate(iter_conversations(split)):  # type: ignore[arg-type]
        if continuation_every and number % continuation_every == continuation_every - 1:
            prompt = render_first_prompt(tokenizer, conversation, max_tokens - 16)
            if prompt is None:
                continue

            def make(prompt: list[int] = prompt) -> list[int]:
                budget = min(continuation_tokens, max_tokens - len(prompt))
                return prompt + greedy_continuation(model, prompt, budget, eos)

            yield CacheSource(conversation.id, "continuation", make)
        else:
            ids = render_conversation(tokenizer, conversation, max_tokens)
            if len(ids) >= 32:
                yield CacheSource(conversation.id, "sharegpt", lambda ids=ids: ids)


@torch.inference_mode()
def build_training_cache(
    model: nn.Module,
    sources: Iterator[CacheSource],
    directory: str | Path,
    layers: Sequence[int],
    num_sources: int,
    topk: int = 64,
    sources_per_shard: int = 8,
    description: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Cache ``num_sources`` sequences from ``sources`` (consumed in order; resumable)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    manifest_path = directory / MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if not set(layers) <= set(manifest["layers"]) or manifest["topk"] != topk:
            raise ValueError(
                f"{directory} caches layers {manifest['layers']} top-{manifest['topk']}; "
                f"asked for layers {list(layers)} top-{topk}: use another --cache-dir"
            )
    else:
        manifest = {
            "kind": "training",
            "layers": list(layers),
            "topk": topk,
            "hidden_size": int(model.config.hidden_size),
            "num_layers": len(decoder_parts(model)[0]),
            "sources_per_shard": sources_per_shard,
            "shards": [],
            **(description or {}),
        }
    # Training may use a subset of the cached layers; more sources are cached at all of them.
    layers = list(manifest["layers"])
    done = sum(s["sources"] for s in manifest["shards"])
    tap = LayerTap(model, layers)
    _, _, head = decoder_parts(model)
    pending: dict[str, list[torch.Tensor]] = {}
    pending_ids: list[str] = []
    progress = tqdm(total=num_sources, initial=done, desc="caching hidden states", unit="seq", disable=None)
    try:
        for index, source in enumerate(sources):
            if index >= num_sources:
                break
            if index < done:
                continue
            ids = source.make()
            tap.tail = len(ids)
            tap.armed = True
            tap.captured = {}
            model.model(torch.tensor([ids]), use_cache=False)
            tap.armed = False
            final = tap.captured["final"]
            logits = head(final.to(head.weight.dtype)).float()
            topk_ids = torch.topk(logits, topk, dim=-1).indices.to(torch.int32)
            row = {f"h.{layer}": tap.captured[f"h.{layer}"] for layer in layers}
            row["final"] = final
            row["topk_ids"] = topk_ids
            row["source"] = torch.full((len(ids),), index, dtype=torch.int32)
            row["token"] = torch.tensor(ids, dtype=torch.int32)
            for name, tensor in row.items():
                pending.setdefault(name, []).append(tensor)
            pending_ids.append(f"{source.kind}:{source.id}")
            progress.update(1)
            if len(pending_ids) == sources_per_shard or index + 1 == num_sources:
                _flush(directory, manifest, pending, pending_ids)
                pending, pending_ids = {}, []
        if pending_ids:
            _flush(directory, manifest, pending, pending_ids)
    finally:
        tap.remove()
        progress.close()
    manifest["positions"] = sum(s["positions"] for s in manifest["shards"])
    write_manifest(directory, manifest)
    return manifest


def _flush(directory: Path, manifest: dict[str, Any], pending: dict[str, list[torch.Tensor]], ids: list[str]) -> None:
    tensors = {}
    for name, parts in pending.items():
        joined = torch.cat(parts)
        tensors[name] = _hidden_dtype(joined) if joined.is_floating_point() else joined
    number = len(manifest["shards"])
    path = directory / f"shard-{number:05d}.safetensors"
    save_atomic(tensors, path)
    manifest["shards"].append(
        {"file": path.name, "sources": len(ids), "positions": int(tensors["token"].shape[0]), "ids": ids}
    )
    manifest["positions"] = sum(s["positions"] for s in manifest["shards"])
    write_manifest(directory, manifest)


def load_training_cache(directory: str | Path, shards: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """All (or the chosen) shards concatenated; hidden states as float32."""
    paths = shard_paths(directory)
    if shards is not None:
        paths = [paths[i] for i in shards]
    if not paths:
        raise FileNotFoundError(f"no cache shards in {directory}")
    parts: dict[str, list[torch.Tensor]] = {}
    for path in paths:
        for name, tensor in load_file(str(path)).items():
            parts.setdefault(name, []).append(tensor.float() if tensor.is_floating_point() else tensor)
    return {name: torch.cat(tensors) for name, tensors in parts.items()}
