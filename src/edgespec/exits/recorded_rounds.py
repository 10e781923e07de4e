"""Speculative rounds recorded for offline exit evaluation: real greedy speculative decoding with
the real draft. Per round, the hidden states of the ``gamma + 1`` verified positions after each
layer (fp32, so an exit computed offline equals the exit computed online), the final top-1 ids,
the draft block and the final verdict. Any set of adapters and thresholds can then be evaluated
offline, without running the target again. Shards and manifest as in ``hidden_cache``, one shard
per prompt, resumable per prompt."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

from edgespec.core.config import GREEDY, GenerationConfig
from edgespec.core.modes import Mode
from edgespec.drivers.backend_interface import CloudJob
from edgespec.drivers.real_backends import RealCloud, RealEdge
from edgespec.drivers.virtual_clock import ClientSpec, VirtualClock
from edgespec.exits.hidden_cache import MANIFEST, LayerTap, save_atomic, shard_paths, write_manifest
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime


@torch.inference_mode()
def record_rounds(
    target_model: nn.Module,
    draft_model: nn.Module,
    prompts: Iterator[tuple[str, list[int]]],
    directory: str | Path,
    layers: Sequence[int],
    num_prompts: int,
    gamma: int = 4,
    max_new_tokens: int = 64,
    eos_ids: Iterable[int] = (),
    description: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Greedy speculative decoding of each prompt with the real draft; one shard per prompt
    holding every round's verified positions. Resumable per prompt."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    manifest_path = directory / MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
    else:
        manifest = {
            "kind": "rounds",
            "layers": list(layers),
            "gamma": gamma,
            "max_new_tokens": max_new_tokens,
            "shards": [],
            **(description or {}),
        }
    done = len(manifest["shards"])
    target = TargetRuntime(target_model)
    draft = DraftRuntime(draft_model)
    # A second cache on the draft, for the send-time guess's bonus (the draft's own next token).
    guesser = DraftRuntime(draft_model)
    tap = LayerTap(target_model, layers)
    config = GenerationConfig(max_new_tokens=max_new_tokens, gamma=gamma, eos_ids=frozenset(eos_ids))
    progress = tqdm(total=num_prompts, initial=done, desc="recording speculative rounds", unit="prompt", disable=None)
    try:
        for index, (prompt_id, prompt) in enumerate(prompts):
            if index >= num_prompts:
                break
            if index < done:
                continue
            started = time.perf_counter()
            target.reset()
            draft.reset()
            guesser.reset()
            rows: dict[str, list[torch.Tensor]] = {}
            # The rounds are the engine's own (the round core, sd mode); the tap reads each verify.
            cloud = _RecordingCloud(target, tap, layers, gamma, rows, guesser)
            (result,) = VirtualClock(cloud).run(
                [
                    ClientSpec(
                        list(prompt),
                        Mode.SD,
                        config,
                        RealEdge(draft, GREEDY, 0, candidates=True),
                        eos_ids=config.eos_ids,
                    )
                ]
            )
            produced = len(result.tokens)
            tensors = {name: torch.stack(parts) for name, parts in rows.items()}  # [rounds, gamma+1, ...]
            path = directory / f"shard-{index:05d}.safetensors"
            save_atomic(tensors, path)
            manifest["shards"].append(
                {
                    "file": path.name,
                    "id": prompt_id,
                    "rounds": len(rows["verdict"]),
                    "new_tokens": produced,
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
            write_manifest(directory, manifest)
            progress.update(1)
    finally:
        tap.remove()
        progress.close()
    return manifest


class _RecordingCloud(RealCloud):
    """The target as the engine runs it, with the hidden states of every full-length verify
    recorded (a last block cut short by the token budget has no place in [rounds, gamma + 1])."""

    def __init__(
        self,
        target: TargetRuntime,
        tap: LayerTap,
        layers: Sequence[int],
        gamma: int,
        rows: dict[str, list[torch.Tensor]],
        guesser: DraftRuntime,
    ) -> None:
        super().__init__(target)
        self.tap, self.layers, self.gamma, self.rows, self.guesser = tap, layers, gamma, rows, guesser

    def _run(self, job: CloudJob) -> Any:
        record = job.kind == "verify" and job.block is not None and len(job.block.tokens) == self.gamma
        if record:
            self.tap.tail, self.tap.armed, self.tap.captured = self.gamma + 1, True, {}
        try:
            result = super()._run(job)
        finally:
            self.tap.armed = False
        if record:
            assert job.block is not None
            logits = self.target.score_tail(job.sequence + job.block.tokens, self.gamma + 1, kv=self.kv)
            for layer in self.layers:
                self.rows.setdefault(f"h.{layer}", []).append(self.tap.captured[f"h.{layer}"])
            self.rows.setdefault("final_top1", []).append(torch.argmax(logits, dim=-1).to(torch.int32))
            self.rows.setdefault("draft", []).append(torch.tensor(job.block.tokens, dtype=torch.int32))
            verdict = result.verdict
            self.rows.setdefault("verdict", []).append(
                torch.tensor([verdict.accepted, verdict.next_token], dtype=torch.int32)
            )
            # What a candidate-id exit scores, and the guess (all accepted + this bonus) to weigh it against.
            self.rows.setdefault("candidates", []).append(job.block.candidates.to(torch.int32))
            bonus = int(torch.argmax(self.guesser.next_token_logits(job.sequence + job.block.tokens)))
            self.rows.setdefault("guess_bonus", []).append(torch.tensor(bonus, dtype=torch.int32))
        return result


def load_rounds(directory: str | Path) -> dict[str, torch.Tensor]:
    """All recorded rounds: ``h.<L>`` [R, gamma+1, H], ``final_top1`` [R, gamma+1], ``draft``
    [R, gamma], ``verdict`` [R, 2] (accepted, next token), ``prompt`` [R]; rounds recorded since
    candidate-id exits also ``candidates`` [R, gamma, k] (the draft's top-k ids per token) and
    ``guess_bonus`` [R] (the draft's own token after the block: the send-time guess's bonus)."""
    paths = shard_paths(directory)
    if not paths:
        raise FileNotFoundError(f"no recorded rounds in {directory}")
    parts: dict[str, list[torch.Tensor]] = {}
    for number, path in enumerate(paths):
        tensors = load_file(str(path))
        for name, tensor in tensors.items():
            parts.setdefault(name, []).append(tensor)
        parts.setdefault("prompt", []).append(torch.full((tensors["verdict"].shape[0],), number, dtype=torch.int32))
    return {name: torch.cat(tensors) for name, tensors in parts.items()}
