"""One paged KV pool for every session: `transformers`' ``PagedAttentionCache`` (its cache tensor,
its sector pool, its block allocator), with the one thing speculation adds that continuous
batching lacks: rewinding a session after a rejection.

Each session is a request id of the cache. Its KV entry for position i lives in block
``i // page_size`` of its block table (``allocator.block_table[request_id]``) at offset
``i % page_size``, written through the allocator's own write indices. Rewinding to ``length``
tokens therefore needs no copy: the entries past ``length`` are simply overwritten by the next
tokens fed (the pass reads only the first ``past + new`` positions), and the blocks wholly past
``length`` go back to the pool through the allocator's own ledger and pool. Block sharing
(prefix de-duplication) is off: a shared block would be rewritten by a rewind.

Admission reserves: a session takes a reservation of ``session_tokens`` worth of blocks when it is
created, so a pass never runs out of blocks halfway through a generation; when no reservation is
left the session is refused (``PoolExhausted``) and the sessions already running are untouched.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass

import torch
from transformers import ContinuousBatchingConfig, PretrainedConfig
from transformers.generation.continuous_batching.cache import PagedAttentionCache
from transformers.generation.continuous_batching.cache_allocators import FULL_ATTENTION
from transformers.generation.continuous_batching.distributed import DistributedHelper

logger = logging.getLogger(__name__)


class PoolExhausted(RuntimeError):
    """No room for one more session in the KV pool: the server refuses it (BUSY)."""


@dataclass(frozen=True)
class PoolSettings:
    """How the pool is sized: ``sessions`` sessions of up to ``session_tokens`` tokens each, in
    pages of ``page_size`` tokens; ``pass_tokens``: the most tokens one pass feeds."""

    sessions: int = 64
    session_tokens: int = 2048
    page_size: int = 64
    pass_tokens: int = 4096

    @property
    def blocks_per_session(self) -> int:
        return math.ceil(self.session_tokens / self.page_size)


class _Held:
    """What ``PagedAttentionCache.can_store_request_tokens`` reads of a request: its id and length."""

    def __init__(self, request_id: str, length: int) -> None:
        self.request_id = request_id
        self._length = length

    def current_len(self) -> int:
        return self._length


class SessionPool:
    """The paged cache and who holds which blocks. Not thread-safe for passes (the engine runs one
    at a time); reservations are taken and returned under a lock (sessions end on any thread)."""

    def __init__(
        self, config: PretrainedConfig, settings: PoolSettings, device: torch.device | str, dtype: torch.dtype
    ) -> None:
        self.settings = settings
        cb_config = ContinuousBatchingConfig(
            page_size=settings.page_size,
            num_blocks=settings.sessions * settings.blocks_per_session,
            max_batch_tokens=settings.pass_tokens,
            max_requests_per_batch=settings.sessions,
            max_blocks_per_request=0,  # no block-table fast path: it needs flash-attn's kernel
            allow_block_sharing=False,  # a rewind rewrites a session's blocks: none may be shared
            max_memory_percent=0.9,
        )
        self.cache = PagedAttentionCache(
            config, cb_config, device, DistributedHelper(None, None), dtype=dtype, model_supports_logits_to_keep=True
        )
        if list(self.cache.cache_allocators) != [FULL_ATTENTION]:
            raise ValueError(
                "the paged engine serves full-attention models only: a sliding window's ring of blocks cannot be "
                "rewound after a rejection (use --engine transformers)"
            )
        self.allocator = self.cache.cache_allocators[FULL_ATTENTION]
        self._lock = threading.RLock()  # a collection inside it may release a session (finalizer)
        self._reserved = 0
        self._next_id = 0

    @property
    def device(self) -> torch.device:
        return self.cache.cache_tensor.device

    def open(self) -> str:
        """A new session's request id, with its reservation taken (``PoolExhausted`` when none is left)."""
        with self._lock:
            if self._reserved + self.settings.blocks_per_session > self.cache.num_blocks:
                raise PoolExhausted(
                    f"the paged KV pool is full ({self._reserved // self.settings.blocks_per_session} sessions of "
                    f"{self.settings.session_tokens} tokens): retry later, or serve with more --max-sessions"
                )
            self._reserved += self.settings.blocks_per_session
            self._next_id += 1
            return f"session-{self._next_id}"

    def unreserve(self) -> None:
        """Give a closed session's reservation back (any thread)."""
        with self._lock:
            self._reserved -= self.settings.blocks_per_session

    def free(self, request_id: str) -> None:
        """Give a closed session's blocks back (on the thread that runs the passes)."""
        self.cache.free_blocks(request_id, no_cache=True)

    def grow(self, request_id: str, held: int, adding: int) -> None:
        """Blocks for ``adding`` tokens after the ``held`` a session keeps, from the cache's own allocator."""
        if held + adding > self.settings.session_tokens:
            raise ValueError(
                f"a session may hold {self.settings.session_tokens} tokens in the paged pool, "
                f"{held + adding} were asked for"
            )
        if not self.cache.can_store_request_tokens(_Held(request_id, held), adding):  # allocates when it can
            raise PoolExhausted("the paged KV pool has no free block left for this session's tokens")

    def rewind(self, request_id: str, length: int) -> None:
        """Keep a session's first ``length`` entries: the blocks wholly past them go back to the pool
        (the entries past ``length`` in the last kept block are overwritten by the next tokens fed)."""
        table = self.allocator.block_table.get(request_id)
        if table is None:
            return
        keep = math.ceil(length / self.settings.page_size)
        dropped = table[keep:]
        del table[keep:]
        freed = [block for block in dropped if self.allocator.ledger.release(block, no_cache=True)]
        self.cache.pool.free_blocks(self.allocator.index, freed)

    def blocks_of(self, request_id: str) -> list[int]:
        return list(self.allocator.block_table.get(request_id, []))

    def indices(self, request_id: str, past: int, new: int) -> tuple[list[int], list[int]]:
        """(read, write) physical rows of the cache tensor for feeding ``new`` tokens after ``past``:
        the allocator's own index arithmetic."""
        read: list[list[int]] = [[]]
        write: list[list[int]] = [[]]
        self.cache.extend_read_and_write_indices(request_id, past, new, read, write)
        return read[0], write[0]

    def entries(self, request_id: str, layer: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A session's first ``length`` keys and values of one layer, [length, kv_heads, dim]: for
        checking a rewind against a cache built from scratch."""
        read, _ = self.indices(request_id, length, 0)
        keys, values = self.allocator._kv_token_views[layer]
        index = torch.tensor(read, dtype=torch.long, device=self.device)
        return keys.index_select(0, index), values.index_select(0, index)

    @property
    def read_trash(self) -> int:
        return self.allocator.read_trash_index

    @property
    def write_trash(self) -> int:
        return self.allocator.write_trash_index

    def free_blocks(self) -> int:
        """Blocks not held by any session (free in the pool, in sectors not handed out yet included)."""
        return self.cache.pool.count_free_blocks(self.allocator.index) + (
            self.cache.pool.num_free_sectors * self.allocator.blocks_per_sector
        )
