"""Reusing the KV cache of a shared prompt prefix across generations.

A control loop (or any chat) re-sends nearly the same prompt every time: the system prompt, the
task, earlier turns, then a little that is new. The KV entry at position i depends only on
tokens[: i + 1] (the invariant ``TrackedCache`` rests on), so a cache filled for one prompt is
exactly valid for any other prompt over their common prefix: only the rest needs a prefill, and
the logits — hence every verdict and token — are those of a prefill of the whole prompt.

This module is the store: bounded, least-recently-used, with private copies in and out (a
session's cache is truncated and appended to as it decodes; a stored snapshot never changes).
The server (``serve --prefix-cache-tokens N``) gives a session a cache from ``acquire`` and
``offer``s it back when the generation has finished. One store per tenant (``TenantPrefixCaches``,
keyed by the auth token the client presented): whether a prefix was cached shows in timing, so
one tenant must not learn another's prompts from it.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from transformers import PretrainedConfig

from edgespec.models.kv import TrackedCache, longest_valid_prefix

logger = logging.getLogger(__name__)


@dataclass
class _Entry:
    tokens: tuple[int, ...]
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # keys, values: [batch, heads, len(tokens), dim]
    last_used: int


@dataclass
class PrefixCacheStats:
    lookups: int = 0
    hits: int = 0
    reused_tokens: int = 0  # prompt positions not prefilled thanks to the cache
    evictions: int = 0


class PrefixCache:
    """KV snapshots keyed by their tokens; ``acquire`` gives a fresh cache holding the longest
    stored prefix of a sequence, ``offer`` keeps a snapshot of a cache for later prompts."""

    def __init__(self, config: PretrainedConfig, max_tokens: int = 32_768, min_reuse: int = 8) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if min_reuse < 1:
            raise ValueError(f"min_reuse must be >= 1, got {min_reuse}")
        self.config = config
        self.max_tokens = max_tokens
        self.min_reuse = min_reuse  # shorter matches are not worth a copy
        self.stats = PrefixCacheStats()
        self._entries: list[_Entry] = []
        self._clock = 0
        self._lock = threading.Lock()

    @property
    def tokens_held(self) -> int:
        return sum(len(e.tokens) for e in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def acquire(self, sequence: Sequence[int], keep_uncached: int = 1) -> tuple[TrackedCache, int]:
        """A new cache for ``sequence`` holding the longest stored prefix of it (leaving at least
        the last ``keep_uncached`` tokens to be fed, as ``TrackedCache.sync`` does), and how many
        positions it holds. The caller's next ``sync(sequence)`` feeds only the rest."""
        cache = TrackedCache(self.config)
        with self._lock:
            self.stats.lookups += 1
            best, length = longest_valid_prefix(self._entries, sequence, keep_uncached)
            if best is None or length < self.min_reuse:
                return cache, 0
            self._clock += 1
            best.last_used = self._clock
            self.stats.hits += 1
            self.stats.reused_tokens += length
            for index, (keys, values) in enumerate(best.layers):
                cache.cache.update(keys[:, :, :length].clone(), values[:, :, :length].clone(), index)
        cache.tokens = [int(t) for t in sequence[:length]]
        held = cache.cache.get_seq_length()
        if held != length:
            raise RuntimeError(f"restored KV cache holds {held} positions, expected {length}")
        logger.debug("prefix cache: reusing %d of %d positions", length, len(sequence))
        return cache, length

    def offer(self, kv: TrackedCache, length: int | None = None) -> bool:
        """Keep a snapshot of the first ``length`` positions of ``kv`` (default: all it holds).
        Returns whether it was stored (not when too short, larger than the whole budget, or
        already covered by a stored entry)."""
        length = len(kv) if length is None else max(0, min(length, len(kv)))
        if length < self.min_reuse or length > self.max_tokens:
            return False
        layers = []
        for layer in kv.cache.layers:
            keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
            if keys is None or values is None or getattr(layer, "is_sliding", False):
                # A sliding-window layer keeps only its window: its prefix cannot be replayed.
                logger.debug("prefix cache: a layer without a full KV history; not stored")
                return False
            layers.append((keys[:, :, :length].detach().clone(), values[:, :, :length].detach().clone()))
        tokens = tuple(int(t) for t in kv.tokens[:length])
        with self._lock:
            self._clock += 1
            for entry in self._entries:
                if entry.tokens[:length] == tokens:  # an entry already covers this one
                    entry.last_used = self._clock
                    return False
            # Entries this one extends are now redundant.
            self._entries = [e for e in self._entries if tokens[: len(e.tokens)] != e.tokens]
            self._entries.append(_Entry(tokens, layers, self._clock))
            while self.tokens_held > self.max_tokens:
                oldest = min(self._entries, key=lambda e: e.last_used)
                self._entries.remove(oldest)
                self.stats.evictions += 1
        return True


class TenantPrefixCaches:
    """One ``PrefixCache`` per auth identity, each of ``max_tokens``; at most ``max_tenants``
    stores, the least recently used dropped first (behind a token check there is one identity;
    on a server without auth every client is the same tenant)."""

    def __init__(
        self,
        config: PretrainedConfig | None,
        max_tokens: int,
        max_tenants: int = 8,
        min_reuse: int = 8,
        new_store: Callable[[], Any] | None = None,
    ) -> None:
        """``new_store``: how a tenant's store is made where the engine keeps its KV itself (the
        llama.cpp engine's sequences); None: KV snapshots of ``config``'s model."""
        if max_tenants < 1:
            raise ValueError(f"max_tenants must be >= 1, got {max_tenants}")
        self._new_store = new_store or (lambda: PrefixCache(config, max_tokens, min_reuse))  # type: ignore[arg-type]
        self._new_store()  # checks the limits now, not at the first session
        self.config = config
        self.max_tokens = max_tokens
        self.max_tenants = max_tenants
        self.min_reuse = min_reuse
        self._stores: collections.OrderedDict[str, PrefixCache] = collections.OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def identity(credential: str | bytes | None) -> str:
        """A store key for the presented credential (a digest: the token itself is not kept)."""
        if not credential:
            return ""
        raw = credential if isinstance(credential, bytes) else credential.encode("utf-8", "replace")
        return hashlib.sha256(raw).hexdigest()

    def for_tenant(self, identity: str) -> Any:
        with self._lock:
            store = self._stores.get(identity)
            if store is None:
                store = self._stores[identity] = self._new_store()
                while len(self._stores) > self.max_tenants:
                    self._stores.popitem(last=False)
            self._stores.move_to_end(identity)
            return store

    @classmethod
    def for_runtime(cls, runtime: Any, max_tokens: int) -> "TenantPrefixCaches":
        """Stores of the kind ``runtime`` keeps: its own (``new_prefix_store``) where it has them,
        else KV snapshots of its model."""
        new_prefix_store = getattr(runtime, "new_prefix_store", None)
        if new_prefix_store is not None:
            return cls(None, max_tokens, new_store=lambda: new_prefix_store(max_tokens))
        return cls(runtime.model.config, max_tokens)

    def stats(self) -> PrefixCacheStats:
        """Summed over the tenants' stores."""
        total = PrefixCacheStats()
        with self._lock:
            for store in self._stores.values():
                for name in ("lookups", "hits", "reused_tokens", "evictions"):
                    setattr(total, name, getattr(total, name) + getattr(store.stats, name))
        return total
