"""What the verifier server needs from a target engine, whatever runs the model.

The server (``server/``) and the round code (``decoding/block_scoring.py``) call a target through
these few members only; `transformers` (``engines/transformers_engine.py``, today's
``TargetRuntime``), the paged engine (``engines/paged.py``) and llama.cpp (``engines/llamacpp.py``)
all provide them, so every mode runs
unchanged on either. A session's cache is the engine's own object; callers only say what the
committed sequence is now (``sync`` / ``rollback``) and never compute rollback lengths.
"""

from __future__ import annotations

import collections
import weakref
from typing import Protocol, Sequence, runtime_checkable

import torch

from edgespec.models.exit_heads import ExitHeads
from edgespec.models.target import ScoreRequest

ENGINE_NAMES = ("auto", "llamacpp", "paged", "transformers")


def check_session_fits(length: int | None, prompt_tokens: int, max_new_tokens: int, holder: str) -> None:
    """ValueError when a prompt and its new tokens exceed the ``length`` tokens a session may hold
    in ``holder`` (None: no limit)."""
    if length is not None and prompt_tokens + max_new_tokens > length:
        raise ValueError(
            f"a prompt of {prompt_tokens} tokens plus max_new_tokens {max_new_tokens} exceeds the "
            f"{length} tokens a session may hold in {holder}"
        )


@runtime_checkable
class SessionCache(Protocol):
    """One session's KV state inside an engine, and the tokens it holds."""

    tokens: list[int]

    def __len__(self) -> int: ...

    @property
    def batchable(self) -> bool: ...

    def sync(self, sequence: Sequence[int], keep_uncached: int = 1) -> list[int]:
        """Roll back to what is still valid for ``sequence``; the tokens still to feed."""
        ...


@runtime_checkable
class TargetEngine(Protocol):
    """A target model that scores many sessions' tokens in one pass."""

    engine_name: str  # "transformers", "paged" or "llamacpp": benchmarks name it in every row
    exits: ExitHeads | None  # None: the engine gives no early verdicts
    num_layers: int
    live_caches: weakref.WeakSet
    batch_sizes: collections.Counter[int]

    @property
    def vocab_size(self) -> int: ...

    @property
    def context_length(self) -> int | None: ...

    @property
    def sliding_window(self) -> int | None: ...

    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """ValueError when a generation would not fit the engine's context."""
        ...

    def new_cache(self) -> SessionCache: ...

    def score(self, request: ScoreRequest) -> torch.Tensor:
        """Logits [tail, vocab] (float32, host) or, with ``argmax_only``, ids [tail]."""
        ...

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[torch.Tensor]:
        """``score`` for several sessions in one pass."""
        ...

    def rollback(self, sequence: Sequence[int], kv: SessionCache | None = None) -> None:
        """Drop cache entries that ``sequence`` (the committed tokens) no longer supports."""
        ...
