"""The target runtime: a `transformers` causal LM with a tracked KV cache and early exits.

Exits are read through forward hooks on the model's own decoder layers, so the model's forward
(masks, rotary embeddings, cache updates) runs unmodified for every Llama/Qwen2/Mistral-style
model and the final logits are bit-identical with or without exits. After each exit layer the
hook turns the hidden state of the requested positions into exit logits (adapter -> frozen final
norm -> frozen LM head) and hands them to a callback, mid-forward: that is the early verdict's
moment.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from edgespec.models.batching import forward_batch
from edgespec.models.exit_heads import ExitHeads, ExitReading
from edgespec.models.kv import TrackedCache, forward_with_cache, standard_head_input

logger = logging.getLogger(__name__)

ExitCallback = Callable[[ExitReading], None]
# A sliding-window target must keep committed text plus the largest draft block in its window:
# the default largest block a server accepts (--max-block).
SLIDING_WINDOW_BLOCK_ROOM = 64


@dataclass
class ScoreRequest:
    """One session's share of a (batched) forward: see ``TargetRuntime.score_tail``."""

    sequence: Sequence[int]
    tail: int
    kv: TrackedCache
    on_exit: ExitCallback | None = None
    # [tail - 1, k] ids: exits score only these (row i: the ids the i-th tail position may predict)
    # instead of the whole vocabulary; None: full LM head.
    exit_candidates: torch.Tensor | None = None
    # The consumer reads only each row's argmax (greedy): the runtime returns the argmax ids, a
    # LongTensor [tail] on the host, instead of the logits. On an accelerator the argmax runs
    # there and a batched pass copies all its greedy rows' ids at once: the [tail, vocab] float32
    # copy per session it replaces took a large share of a batched pass on a GPU.
    argmax_only: bool = False


@dataclass(frozen=True)
class _Tap:
    """Which batch row's last ``tail`` positions an exit callback reads."""

    row: int
    tail: int
    callback: ExitCallback
    candidates: torch.Tensor | None = None


def _check_tail(sequence: Sequence[int], tail: int) -> None:
    if tail < 1 or tail > len(sequence):
        raise ValueError(f"tail must be in 1..{len(sequence)}, got {tail}")


def decoder_parts(model: nn.Module) -> tuple[nn.ModuleList, nn.Module, nn.Module]:
    """(decoder layers, final norm, LM head) of a Llama-family causal LM."""
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    norm = getattr(base, "norm", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(layers, nn.ModuleList) or norm is None or head is None:
        raise TypeError(
            f"{type(model).__name__} does not look like a Llama/Qwen2/Mistral causal LM "
            "(expected .model.layers, .model.norm and an output embedding)"
        )
    return layers, norm, head


class TargetRuntime:
    def __init__(self, model: nn.Module, exits: ExitHeads | None = None) -> None:
        self.model = model
        standard_head_input(model)
        self.layers, self.final_norm, self.lm_head = decoder_parts(model)
        self.num_layers = len(self.layers)
        self.kv = TrackedCache(model.config)
        self.exits: ExitHeads | None = None
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._taps: list[_Tap] = []
        self._started = 0.0
        # Session caches still alive somewhere: lets a server (and its tests) see that closed
        # sessions really release their KV memory.
        self.live_caches: weakref.WeakSet[TrackedCache] = weakref.WeakSet()
        # Sessions per forward pass actually run (1 for every unbatched pass).
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        if exits is not None:
            self.attach_exits(exits)

    @property
    def vocab_size(self) -> int:
        return int(self.lm_head.weight.shape[0])

    @property
    def context_length(self) -> int | None:
        """Positions the target was trained for (None when its config does not say). Past them
        a rotary model does not fail, it silently degrades, so callers refuse such requests."""
        length = getattr(self.model.config, "max_position_embeddings", None)
        return int(length) if length else None

    @property
    def sliding_window(self) -> int | None:
        """The smallest sliding attention window among the target's layers (None: none slide)."""
        windows = [int(layer.sliding_window) for layer in self.kv.cache.layers if getattr(layer, "is_sliding", False)]
        return min(windows) if windows else None

    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """ValueError when a prompt plus its new tokens would run past the context window, or
        (with a draft block on top) past a sliding attention window: once transformers' sliding
        cache is full it drops old states and can no longer be rolled back after a rejection."""
        length = self.context_length
        if length is not None and prompt_tokens + max_new_tokens > length:
            raise ValueError(
                f"a prompt of {prompt_tokens} tokens plus max_new_tokens {max_new_tokens} exceeds "
                f"the target's context window of {length} tokens"
            )
        window = self.sliding_window
        if window is not None and prompt_tokens + max_new_tokens + SLIDING_WINDOW_BLOCK_ROOM >= window:
            raise ValueError(
                f"a prompt of {prompt_tokens} tokens plus max_new_tokens {max_new_tokens} (plus room for a "
                f"{SLIDING_WINDOW_BLOCK_ROOM}-token draft block) reaches the target's sliding attention window "
                f"of {window} "
                "tokens, past which its KV cache cannot be rolled back"
            )

    def attach_exits(self, exits: ExitHeads) -> None:
        self.detach_exits()
        for layer in exits.layers:
            if not 1 <= layer < self.num_layers:
                raise ValueError(
                    f"exit layer {layer} is outside 1..{self.num_layers - 1} for this {self.num_layers}-layer target"
                )
        dtype = next(self.model.parameters()).dtype
        self.exits = exits.to(device=self.model.device, dtype=dtype).eval().requires_grad_(False)
        for layer in exits.layers:
            self._hooks.append(self.layers[layer - 1].register_forward_hook(self._make_hook(layer)))

    def detach_exits(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self.exits = None

    def exit_logits(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """Exit logits from hidden states [..., hidden] after ``layer`` decoder layers."""
        assert self.exits is not None
        return self.lm_head(self.final_norm(self.exits.adapter(layer)(hidden)))

    def exit_candidate_logits(self, layer: int, hidden: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Exit logits [rows, k] of only the ``candidates`` ids [rows, k] from hidden states
        [>= rows, hidden]: the LM head's rows of those ids, not its whole vocabulary (whose weights,
        read once per exit, are what a full exit costs on a memory-bound processor)."""
        assert self.exits is not None
        normed = self.final_norm(self.exits.adapter(layer)(hidden[: candidates.shape[0]]))
        rows = self.lm_head.weight[candidates.to(self.lm_head.weight.device)]  # [rows, k, hidden]
        scores = torch.einsum("rh,rkh->rk", normed.to(rows.dtype), rows)
        bias = getattr(self.lm_head, "bias", None)
        return scores + bias[candidates] if bias is not None else scores

    def _make_hook(self, layer: int) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            taps = self._taps
            if not taps:
                return
            hidden = output[0] if isinstance(output, tuple) else output
            full = [tap for tap in taps if tap.candidates is None]
            readings: list[tuple[_Tap, ExitReading]] = []
            for tap in taps:
                if tap.candidates is not None:
                    scores = (
                        self.exit_candidate_logits(layer, hidden[tap.row, -tap.tail :, :], tap.candidates).float().cpu()
                    )
                    readings.append((tap, ExitReading(layer=layer, logits=scores, candidate_ids=tap.candidates)))
            if full:
                # Every row's real tokens end at the last column (batches are left-padded), and one
                # LM-head product serves all rows of the batch.
                rows = torch.cat([hidden[tap.row, -tap.tail :, :] for tap in full])
                logits = self.exit_logits(layer, rows).float().cpu()
                readings += [
                    (tap, ExitReading(layer=layer, logits=part))
                    for tap, part in zip(full, torch.split(logits, [tap.tail for tap in full]))
                ]
            elapsed = time.perf_counter() - self._started
            for tap, reading in readings:
                reading.elapsed_s = elapsed
                tap.callback(reading)

        return hook

    @torch.inference_mode()
    def score_tail(
        self,
        sequence: Sequence[int],
        tail: int,
        on_exit: ExitCallback | None = None,
        kv: TrackedCache | None = None,
        exit_candidates: torch.Tensor | None = None,
        argmax_only: bool = False,
    ) -> torch.Tensor:
        """Final logits [tail, vocab] (float32, on the host; with ``argmax_only`` their argmax ids
        [tail] instead, see ``ScoreRequest``) for the last ``tail`` positions of ``sequence``.

        Row i predicts the token after ``sequence[len - tail + i]``. The cache is rolled back to
        what is still valid and only the uncached suffix is fed. ``on_exit`` receives each
        exit's logits for the same ``tail`` positions as soon as its layer has run (with
        ``exit_candidates``, only those ids' logits, see ``ScoreRequest``). ``kv`` is a
        session's own cache when one model serves many sessions (default: this runtime's).
        Not thread-safe: one forward at a time per runtime.
        """
        _check_tail(sequence, tail)
        kv = kv if kv is not None else self.kv
        pending = kv.sync(sequence, keep_uncached=tail)
        self._taps = [_Tap(0, tail, on_exit, exit_candidates)] if on_exit is not None else []
        self._started = time.perf_counter()
        try:
            logits = forward_with_cache(self.model, kv, pending, tail, argmax_only)
        finally:
            self._taps = []
        self.batch_sizes[1] += 1
        return logits

    def score(self, request: ScoreRequest) -> torch.Tensor:
        """``score_tail`` for one ``ScoreRequest``."""
        return self.score_tail(
            request.sequence, request.tail, request.on_exit, request.kv, request.exit_candidates, request.argmax_only
        )

    @torch.inference_mode()
    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[torch.Tensor]:
        """``score_tail`` for several sessions in one forward pass (each with its own cache);
        exit callbacks fire per session as each exit layer completes for the whole batch."""
        for request in requests:
            _check_tail(request.sequence, request.tail)
        if len(requests) == 1 or not all(r.kv.batchable for r in requests):
            return [self.score(r) for r in requests]
        pendings = [r.kv.sync(r.sequence, keep_uncached=r.tail) for r in requests]
        self._taps = [
            _Tap(row, r.tail, r.on_exit, r.exit_candidates) for row, r in enumerate(requests) if r.on_exit is not None
        ]
        self._started = time.perf_counter()
        try:
            logits = forward_batch(
                self.model,
                [r.kv for r in requests],
                pendings,
                [r.tail for r in requests],
                [r.argmax_only for r in requests],
            )
        finally:
            self._taps = []
        self.batch_sizes[len(requests)] += 1
        return logits

    def reset(self) -> None:
        self.kv.reset()

    def iter_segments(
        self, sequence: Sequence[int], tail: int, kv: TrackedCache | None = None
    ) -> Iterator[ExitReading | torch.Tensor]:
        """The forward pass in segments: yields each exit's reading the moment its layer has run,
        then the final logits [tail, vocab]. (A generator view of ``score_tail``'s callback; the
        forward runs on a helper thread while the caller consumes readings.)"""
        items: queue.Queue[object] = queue.Queue()

        def run() -> None:
            try:
                items.put(self.score_tail(sequence, tail, on_exit=items.put, kv=kv))
            except BaseException as error:  # re-raised in the consumer's thread
                items.put(error)

        threading.Thread(target=run, daemon=True, name="target-forward").start()
        while True:
            item = items.get()
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
            if isinstance(item, torch.Tensor):
                return

    def rollback(self, sequence: Sequence[int], kv: TrackedCache | None = None) -> None:
        """Drop cache entries that ``sequence`` (the committed tokens) no longer supports."""
        (kv if kv is not None else self.kv).sync(sequence, keep_uncached=1)

    def new_cache(self) -> TrackedCache:
        cache = TrackedCache(self.model.config)
        self.live_caches.add(cache)
        return cache
