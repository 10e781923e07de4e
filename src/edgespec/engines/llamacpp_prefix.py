"""Prompt-prefix reuse on the llama.cpp engine: a finished session's sequence is kept, and a new
session whose prompt shares a prefix with it starts from a copy of its KV entries instead of a
prefill.

The store has the interface of the transformers engine's prefix cache (``server/prefix_cache.py``:
``acquire`` a cache holding the longest stored prefix, ``offer`` a finished session's cache back),
and rests on the same invariant: the KV entry at position i depends only on tokens[: i + 1], so an
entry is exactly valid for any sequence over their common prefix. What differs is where the KV
lives: in the engine's context, one sequence per session. So ``offer`` keeps the session's own
sequence (no copy: the session has finished, and the sequence is frozen against any further feed),
and ``acquire`` gives a new sequence that copies the stored one (``llama_memory_seq_cp``) on the
pass thread right before its first feed and drops what lies past the shared prefix.

Stored sequences come out of the engine's pool of sequence ids; when the pool runs dry the engine
asks its stores to give back their least recently used entry, so a store never keeps a session out.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from edgespec.models.kv import longest_valid_prefix

logger = logging.getLogger(__name__)


class SequenceEngine(Protocol):
    """What the store needs of the llama.cpp engine (which imports this module, so not the class):
    new sequences (``LlamaSequence``: ``seq_id``, ``tokens``, ``copy_from``, ``frozen``) and the
    set of stores it asks for sequences back."""

    prefix_stores: Any

    def new_cache(self) -> Any: ...


@dataclass
class LlamaPrefixStats:
    """The transformers prefix cache's counters, by the same names (the tenant stores sum them)."""

    lookups: int = 0
    hits: int = 0
    reused_tokens: int = 0  # prompt positions not prefilled thanks to the store
    evictions: int = 0


@dataclass
class _Entry:
    tokens: tuple[int, ...]
    sequence: Any  # a LlamaSequence, frozen: copied from, never fed
    last_used: int


class LlamaPrefixCache:
    """Finished sessions' sequences keyed by their tokens, at most ``max_tokens`` tokens in all."""

    def __init__(self, engine: SequenceEngine, max_tokens: int = 32_768, min_reuse: int = 8) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if min_reuse < 1:
            raise ValueError(f"min_reuse must be >= 1, got {min_reuse}")
        self.engine = engine
        self.max_tokens = max_tokens
        self.min_reuse = min_reuse  # shorter matches are not worth a sequence copy
        self.stats = LlamaPrefixStats()
        self._entries: list[_Entry] = []
        self._clock = 0
        self._lock = threading.Lock()
        engine.prefix_stores.add(self)

    @property
    def tokens_held(self) -> int:
        return sum(len(e.tokens) for e in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def acquire(self, sequence: Sequence[int], keep_uncached: int = 1) -> tuple[Any, int]:
        """A new sequence for ``sequence`` that will hold its longest stored prefix (leaving at least
        the last ``keep_uncached`` tokens to be fed), and how many positions that is."""
        cache = self.engine.new_cache()
        with self._lock:
            self.stats.lookups += 1
            best, length = longest_valid_prefix(self._entries, sequence, keep_uncached)
            if best is None or length < self.min_reuse:
                return cache, 0
            self._clock += 1
            best.last_used = self._clock
            self.stats.hits += 1
            self.stats.reused_tokens += length
            cache.copy_from = best.sequence  # copied on the pass thread before the first feed
        cache.tokens = [int(t) for t in sequence[:length]]
        logger.debug("prefix store: sequence %d reuses %d of %d positions", cache.seq_id, length, len(sequence))
        return cache, length

    def offer(self, kv: Any, length: int | None = None) -> bool:
        """Keep a finished session's sequence for later prompts (its first ``length`` tokens; default
        all it holds). Returns whether it was stored (not when too short, larger than the budget,
        or already covered by a stored entry). A stored sequence is never fed again."""
        length = len(kv) if length is None else max(0, min(length, len(kv)))
        if length < self.min_reuse or length > self.max_tokens or kv.frozen or kv.copy_from is not None:
            return False  # a sequence still waiting for its copy holds nothing to copy from yet
        tokens = tuple(int(t) for t in kv.tokens[:length])
        with self._lock:
            self._clock += 1
            for entry in self._entries:
                if entry.tokens[:length] == tokens:  # an entry already covers this one
                    entry.last_used = self._clock
                    return False
            kv.frozen = True
            # Entries this one extends are now redundant.
            self._entries = [e for e in self._entries if tokens[: len(e.tokens)] != e.tokens]
            self._entries.append(_Entry(tokens, kv, self._clock))
            while self.tokens_held > self.max_tokens:
                self._drop_oldest()
        return True

    def evict_oldest(self) -> bool:
        """Drop the least recently used entry (its sequence goes back to the engine's pool once
        no pending copy needs it). Whether there was one."""
        with self._lock:
            if not self._entries:
                return False
            self._drop_oldest()
            return True

    def _drop_oldest(self) -> None:
        oldest = min(self._entries, key=lambda e: e.last_used)
        self._entries.remove(oldest)
        self.stats.evictions += 1
