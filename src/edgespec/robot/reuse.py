"""Context reuse across decisions in process: the target and draft keep their KV caches from one
generation to the next, so each decision prefills only what follows the prefix it shares with
the previous prompt (the system prompt, the task, earlier turns).

The engine calls ``reset()`` before each generation; these runtimes skip it. That is lossless
by the invariant ``TrackedCache`` rests on: the KV entry at position i depends only on
tokens[: i + 1], and every forward starts with ``sync(sequence)``, which keeps exactly the common
prefix and feeds the rest. (Over the network: ``ClientOptions(reuse_draft_cache=True)`` on the
edge and ``serve --prefix-cache-tokens`` on the server, server/prefix_cache.py.)
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from edgespec.models.draft import DraftRuntime
from edgespec.models.kv import valid_prefix
from edgespec.models.target import TargetRuntime

logger = logging.getLogger(__name__)


class PrefixKeepingTarget(TargetRuntime):
    """A target runtime whose cache outlives a generation. ``last_reused`` is how many prompt
    positions the latest generation's first forward found already cached."""

    def __init__(self, model: torch.nn.Module, exits: Any = None) -> None:
        super().__init__(model, exits)
        self.last_reused = 0
        self._fresh = True

    def reset(self) -> None:
        self._fresh = True  # the next forward is a new generation's prefill; keep the cache

    def score_tail(
        self,
        sequence: Sequence[int],
        tail: int,
        on_exit: Any = None,
        kv: Any = None,
        exit_candidates: Any = None,
        argmax_only: bool = False,
    ) -> torch.Tensor:
        if self._fresh and (kv is None or kv is self.kv):
            self.last_reused = valid_prefix(self.kv.tokens, sequence, tail)
            self._fresh = False
        return super().score_tail(sequence, tail, on_exit, kv, exit_candidates, argmax_only)


class PrefixKeepingDraft(DraftRuntime):
    """A draft runtime whose cache outlives a generation."""

    def reset(self) -> None:
        pass
