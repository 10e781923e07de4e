"""A KV cache that knows which tokens it holds, so rollback is a prefix comparison.

The KV entry at position i depends only on tokens[: i + 1], so after any verdict the cache stays
valid for the longest common prefix of what it holds and what is committed; everything after
that is cut. Callers never compute rollback lengths by hand: they say what the sequence is now.
"""

from __future__ import annotations

import inspect
import logging
from typing import Iterable, Protocol, Sequence, TypeVar

import torch
from transformers import DynamicCache, PretrainedConfig
from transformers.cache_utils import DynamicLayer

logger = logging.getLogger(__name__)


def valid_prefix(held: Sequence[int], sequence: Sequence[int], keep_uncached: int = 1) -> int:
    """How many held positions stay valid for ``sequence``: their common prefix, leaving the last
    ``keep_uncached`` tokens of ``sequence`` to be fed again (the caller needs their logits)."""
    limit = min(len(held), len(sequence) - keep_uncached)
    common = 0
    while common < limit and int(held[common]) == int(sequence[common]):
        common += 1
    return common


class HoldsTokens(Protocol):
    tokens: Sequence[int]


Held = TypeVar("Held", bound=HoldsTokens)


def longest_valid_prefix(
    candidates: Iterable[Held], sequence: Sequence[int], keep_uncached: int = 1
) -> tuple[Held | None, int]:
    """The candidate whose held tokens stay valid for the most positions of ``sequence`` (as
    ``valid_prefix`` counts them), and that count; (None, 0) when none shares a position."""
    best, length = None, 0
    for candidate in candidates:
        common = valid_prefix(candidate.tokens, sequence, keep_uncached)
        if common > length:
            best, length = candidate, common
    return best, length


class TrackedCache:
    """A session's KV cache and the tokens it holds.

    It lives in one of two forms. For a forward of this session alone, transformers'
    `DynamicCache` (``cache``), one tensor per layer that each forward grows by concatenation.
    Between batched passes, every layer's keys (and values) in one tensor with spare room,
    [capacity, layers, heads, dim] (``stacked``; position first, so a session's held entries
    are one contiguous block): a batched pass then reads a session's entries and writes its new
    ones back with one copy each for all layers, where the per-layer form costs one
    concatenation per layer and session (on a launch-bound accelerator, half of a 64-session
    pass's operations). Either form turns into the other on demand, content unchanged.
    """

    def __init__(self, config: PretrainedConfig) -> None:
        self._config = config
        self._cache = DynamicCache(config=config)
        self._stacked: tuple[torch.Tensor, torch.Tensor] | None = None
        self.tokens: list[int] = []

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def cache(self) -> DynamicCache:
        """The cache in transformers' per-layer form (views of the stacked entries, if stacked)."""
        if self._stacked is not None:
            keys, values = self._stacked
            self._stacked = None
            self._cache = DynamicCache(config=self._config)
            held = len(self.tokens)
            for index, layer in enumerate(self._cache.layers):
                # [held, heads, dim] of this layer -> transformers' [1, heads, held, dim], a view.
                hold(layer, keys[:held, index].transpose(0, 1)[None], values[:held, index].transpose(0, 1)[None])
        return self._cache

    @property
    def batchable(self) -> bool:
        """Whether a batched pass can pad and split this cache: only plain full-attention layers
        (a sliding-window layer keeps a rolling buffer whose padding would shift what it keeps)."""
        return self._stacked is not None or all(type(layer) is DynamicLayer for layer in self._cache.layers)

    def stacked(self, room: int, like: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of every layer, [capacity, layers, heads, dim], with room for ``room``
        more entries after the ``len(self)`` held ones (the form is adopted, or the storage grown,
        as needed; a cache holding nothing takes layers, heads, dim, dtype and device from
        ``like``, [..., layers, heads, dim])."""
        held = len(self.tokens)
        needed = held + room
        if self._stacked is None:
            if held:
                layers = self._cache.layers
                template = layers[0].keys
                shape = (stacked_capacity(needed), len(layers), template.shape[1], template.shape[3])
                keys, values = template.new_empty(shape), template.new_empty(shape)
                # Each layer's [heads, held, dim] -> [held, layers, heads, dim].
                keys[:held] = torch.stack([layer.keys[0] for layer in layers]).permute(2, 0, 1, 3)
                values[:held] = torch.stack([layer.values[0] for layer in layers]).permute(2, 0, 1, 3)
            else:
                if like is None:
                    raise ValueError("an empty cache needs a template tensor to take its stacked form")
                shape = (stacked_capacity(needed), *like.shape[-3:])
                keys, values = like.new_empty(shape), like.new_empty(shape)
            self._stacked = (keys, values)
            self._cache = DynamicCache(config=self._config)  # stale now: rebuilt from the stack on demand
        keys, values = self._stacked
        if keys.shape[0] < needed:
            grown = (stacked_capacity(needed), *keys.shape[1:])
            bigger_keys, bigger_values = keys.new_empty(grown), values.new_empty(grown)
            bigger_keys[:held] = keys[:held]
            bigger_values[:held] = values[:held]
            self._stacked = keys, values = bigger_keys, bigger_values
        return keys, values

    def reset(self) -> None:
        self._cache = DynamicCache(config=self._config)
        self._stacked = None
        self.tokens = []

    def truncate(self, length: int) -> None:
        """Drop every entry at position >= ``length``."""
        length = max(0, min(length, len(self.tokens)))
        remove = len(self.tokens) - length
        if remove == 0:
            return
        if length == 0:
            self.reset()
            return
        if self._stacked is None:
            # Layer by layer, skipping any layer never written (a model running fewer layers than
            # its config lists): transformers before 5.2x crops those too and fails on their empty keys.
            for layer in self._cache.layers:
                if getattr(layer, "is_initialized", True) and getattr(layer, "keys", None) is not None:
                    layer.crop(-remove)
        # Stacked, what lies past the held count is simply overwritten by the next entries.
        self.tokens = self.tokens[:length]

    def sync(self, sequence: Sequence[int], keep_uncached: int = 1) -> list[int]:
        """Roll back to what is still valid for ``sequence`` and return the tokens still to feed.

        ``keep_uncached`` tokens at the end of ``sequence`` are always returned (and dropped from
        the cache if present) because the caller needs the logits at those positions.
        """
        common = valid_prefix(self.tokens, sequence, keep_uncached)
        if common < len(self.tokens):
            logger.debug("kv rollback %d -> %d", len(self.tokens), common)
        self.truncate(common)
        return [int(t) for t in sequence[common:]]

    def appended(self, fed: Sequence[int]) -> None:
        """Record that a forward pass just wrote KV entries for ``fed``."""
        self.tokens.extend(int(t) for t in fed)
        held = (
            self._cache.get_seq_length() if self._stacked is None else min(len(self.tokens), self._stacked[0].shape[0])
        )
        if held != len(self.tokens):
            raise RuntimeError(f"KV cache holds {held} positions but tracks {len(self.tokens)} tokens")

    def layer_tensors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(keys, values) per layer, for checking rollback against a cache built from scratch."""
        return [(layer.keys, layer.values) for layer in self.cache.layers]


def stacked_capacity(needed: int) -> int:
    """Stacked storage for ``needed`` entries, with room to grow several rounds before the next copy."""
    return needed + max(32, needed // 4)


def hold(layer: DynamicLayer, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Make an empty layer hold exactly these tensors (views stay views): its own ``update``
    would concatenate them onto an empty tensor, a copy. The empty update first lets the
    installed transformers set up the layer its own way (device, dtype, flags)."""
    layer.update(keys[..., :0, :], values[..., :0, :])
    layer.keys, layer.values = keys, values


def cache_argument_name(model: torch.nn.Module) -> str:
    # transformers 5.x renamed `past_key_values` to `cache`; accept either spelling.
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _standard_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _head_input_in_standard_layout(
    _module: torch.nn.Module, args: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, ...] | None:
    hidden = args[0]
    if hidden.stride() == _standard_strides(hidden.shape):
        return None
    return (hidden.clone(memory_format=torch.contiguous_format), *args[1:])


def standard_head_input(model: torch.nn.Module) -> None:
    """Hand the LM head its input in the standard layout. `transformers` slices the last rows
    (logits_to_keep) as a view whose batch stride spans every fed token; PyTorch counts a size-1
    dimension's stride as contiguous, but a CPU's bf16 head over such a view runs tens of times
    slower than over contiguous rows, for the same logits. A copy of the few rows costs microseconds."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "_edgespec_standard_input", False):
        return
    head.register_forward_pre_hook(_head_input_in_standard_layout)
    head._edgespec_standard_input = True


def forward_with_cache(
    model: torch.nn.Module, kv: TrackedCache, pending: Sequence[int], tail: int, argmax_only: bool = False
) -> torch.Tensor:
    """Feed ``pending`` tokens through ``model`` on top of ``kv``; logits [tail, vocab] in float32
    on the host (``argmax_only``: their argmax ids [tail] instead, see ``ScoreRequest``)."""
    if not pending:
        raise ValueError("nothing to feed: the sequence is already fully cached")
    input_ids = torch.tensor([list(pending)], dtype=torch.long, device=model.device)
    kwargs = {cache_argument_name(model): kv.cache}
    output = model(input_ids=input_ids, use_cache=True, logits_to_keep=tail, **kwargs)
    kv.appended(pending)
    logits = output.logits[0, -tail:, :]
    # Verdicts are decided on the host; a greedy one needs only the ids, taken where the forward ran.
    return logits.argmax(dim=-1).cpu() if argmax_only else logits.float().cpu()


def kv_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of KV cache one token costs (keys and values, every layer): sizes a memory bound."""
    config = model.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    itemsize = next(model.parameters()).element_size()
    return 2 * config.num_hidden_layers * heads * head_dim * itemsize
