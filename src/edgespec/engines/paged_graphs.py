"""Captured CUDA graphs for the paged engine's bucketed passes: one graph per (query tokens, read
rows, session slots) bucket, captured the first time that shape runs and replayed after, so a pass costs a few
input copies and one launch instead of a kernel launch per operation (an eager pass over a 28-layer
model launches hundreds, which bounds a small batch's speed on a fast accelerator).

What a graph holds fixed: the model's forward over a ``PackedPass`` of its bucket (every tensor
argument copied into the graph's own static inputs before each replay; the pool's cache tensor is
the same storage throughout), the LM head over every query row, and each row's argmax. Its outputs
go to buffers shared by all graphs (read before the next pass), so the graphs' temporaries come
from one memory pool and do not pile up per bucket. CUDA only; the CPU runs the same bucketed
inputs eagerly (that is how the tests check a padded pass against an unpadded one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgespec.engines.paged_inputs import PackedPass

logger = logging.getLogger(__name__)

# The tensors a replay reads. The cumulative lengths (``cu_seq_lens_*``) vary with the number of
# sessions, which a bucket does not fix; the SDPA paths never read them (only flash attention
# does), so a graph keeps those of its capture.
_TENSOR_INPUTS = ("input_ids", "position_ids", "attention_mask", "logits_to_keep")


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, Any]  # the static kwargs the graph reads


class GraphedPasses:
    """Replays (capturing on first sight) the graph of a bucketed pass; ``run`` returns the
    [query tokens, vocab] logits and [query tokens] argmax ids, views of shared output buffers."""

    def __init__(self, model: nn.Module, most_tokens: int, vocab: int, dtype: torch.dtype) -> None:
        device = next(model.parameters()).device
        if device.type != "cuda":
            raise ValueError("captured graphs need a CUDA device")
        self.model = model
        self._graphs: dict[tuple[int, int, int], _Captured] = {}
        self._pool = torch.cuda.graph_pool_handle()
        self._logits = torch.empty((most_tokens, vocab), dtype=dtype, device=device)
        self._ids = torch.empty(most_tokens, dtype=torch.long, device=device)
        self.captures = 0

    def __len__(self) -> int:
        return len(self._graphs)

    def run(self, packed: PackedPass) -> tuple[torch.Tensor, torch.Tensor]:
        key = packed.shape_key
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._graphs[key] = self._capture(packed)
        else:
            _copy_inputs(captured.inputs, packed.kwargs)
            captured.graph.replay()
        rows = packed.query_tokens
        return self._logits[:rows], self._ids[:rows]

    def _forward(self, kwargs: dict[str, Any]) -> None:
        logits = self.model(**kwargs).logits[0]  # [query tokens, vocab]
        rows = logits.shape[0]
        self._logits[:rows].copy_(logits)
        self._ids[:rows].copy_(logits.argmax(dim=-1))

    def _capture(self, packed: PackedPass) -> _Captured:
        """Warm up on a side stream (lazy initialisations stay out of the graph), then capture. The
        warm-up computes this pass's real outputs, so the first pass of a bucket is answered by it."""
        inputs = _static_copy(packed.kwargs)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._forward(inputs)
        torch.cuda.current_stream().wait_stream(stream)
        # Capturing records the kernels without running them: the warm-up's outputs and cache writes stand.
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self._forward(inputs)
        self.captures += 1
        tokens, reads, slots = packed.shape_key
        logger.info("captured the paged pass graph for %d tokens x %d read rows (%d slots)", tokens, reads, slots)
        return _Captured(graph, inputs)


def _static_copy(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The kwargs with every tensor cloned into storage the graph owns (lists and dicts of tensors too)."""
    static = dict(kwargs)
    for name in _TENSOR_INPUTS:
        static[name] = kwargs[name].clone()
    static["write_index"] = [t.clone() for t in kwargs["write_index"]]
    static["read_index"] = [t.clone() for t in kwargs["read_index"]]
    return static


def _copy_inputs(static: dict[str, Any], kwargs: dict[str, Any]) -> None:
    for name in _TENSOR_INPUTS:
        static[name].copy_(kwargs[name], non_blocking=True)
    for target, tensor in zip(static["write_index"], kwargs["write_index"]):
        target.copy_(tensor, non_blocking=True)
    for target, tensor in zip(static["read_index"], kwargs["read_index"]):
        target.copy_(tensor, non_blocking=True)
