"""The paged engine: a `transformers` model over one paged KV pool (``PagedAttentionCache``, see
``paged_pool.py``), every pass one packed variable-length batch of all its sessions' new tokens
(``paged_inputs.py``), replayed from captured CUDA graphs on an accelerator (``paged_graphs.py``).

What it changes against the eager `transformers` engine: no session keeps a cache of its own that
a batched pass concatenates into a padded one and writes back; each layer writes the new keys and
values straight into the pool and reads each session's history from it, and the pass runs over
exactly the tokens fed (padding only up to a graph's bucket). What stays: the model's own forward
(`transformers`' paged attention path through SDPA), fp32 logits for sampled rows and the argmax
on the device for greedy ones, and exact rollback (a rejected block's entries are overwritten by
the next tokens fed; whole blocks past the committed length go back to the pool).

No early exits: the guess-based modes (sd, pre-drafting from send-time guesses, cloud-ar, cloud-sd)
run on it; a session asking for early verdicts gets none. Full-attention models only.
"""

from __future__ import annotations

import collections
import gc
import logging
import threading
import weakref
from typing import Sequence

import torch
from torch import nn

from edgespec.engines.interface import check_session_fits
from edgespec.engines.paged_attention import ATTENTION_NAME
from edgespec.engines.paged_inputs import PassRow, pack, pack_per_session, per_session_pays
from edgespec.engines.paged_pool import PoolExhausted, PoolSettings, SessionPool
from edgespec.models.kv import valid_prefix
from edgespec.models.target import SLIDING_WINDOW_BLOCK_ROOM, ScoreRequest

logger = logging.getLogger(__name__)

__all__ = ["PagedEngine", "PagedSession", "PoolExhausted", "PoolSettings"]


class PagedSession:
    """A session's share of the pool: its request id and the tokens its entries hold. When the
    object is collected its blocks go back to the pool (on the pass thread, before the next pass)."""

    batchable = True

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.tokens: list[int] = []

    def __len__(self) -> int:
        return len(self.tokens)

    def sync(self, sequence: Sequence[int], keep_uncached: int = 1) -> list[int]:
        """Keep the common prefix with ``sequence`` (minus its last ``keep_uncached`` tokens, whose
        logits the caller needs); the tokens still to feed."""
        common = valid_prefix(self.tokens, sequence, keep_uncached)
        if common < len(self.tokens):
            logger.debug("%s rollback %d -> %d", self.request_id, len(self.tokens), common)
            self.tokens = self.tokens[:common]
        return [int(t) for t in sequence[common:]]

    def truncate(self, length: int) -> None:
        self.tokens = self.tokens[: max(0, length)]

    def reset(self) -> None:
        self.tokens = []


class PagedEngine:
    """A ``TargetEngine`` on one paged pool. Thread-safe for scoring (one pass at a time)."""

    engine_name = "paged"
    exits = None

    def __init__(
        self,
        model: nn.Module,
        settings: PoolSettings = PoolSettings(),
        cuda_graphs: bool = True,
        bucketed: bool | None = None,
        layout: str = "auto",
    ) -> None:
        """``cuda_graphs``: replay captured graphs of bucketed passes (CUDA only; off on a CPU).
        ``bucketed``: pad passes to the graphs' buckets even without graphs (default: with graphs).
        ``layout``: "packed" (transformers' block-diagonal SDPA), "per-session" (``paged_attention.py``)
        or "auto": per pass, whichever costs less."""
        if layout not in ("auto", "packed", "per-session"):
            raise ValueError(f"layout must be auto, packed or per-session, got {layout!r}")
        self.layout = layout
        model.set_attn_implementation(ATTENTION_NAME)  # SDPA over the pool, packed or per session
        self.model = model
        self.num_layers = int(model.config.num_hidden_layers)
        parameter = next(model.parameters())
        self.dtype = parameter.dtype
        self.pool = SessionPool(model.config, settings, parameter.device, parameter.dtype)
        self._compute = threading.Lock()
        self._closed_lock = threading.RLock()  # a finalizer may run while it is held
        self._closed: list[
            str
        ] = []  # sessions collected since the last pass: their blocks are freed on the pass thread
        self.live_caches: weakref.WeakSet[PagedSession] = weakref.WeakSet()
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self.graphs = None
        if cuda_graphs and parameter.device.type == "cuda":
            from edgespec.engines.paged_graphs import GraphedPasses

            self.graphs = GraphedPasses(model, settings.pass_tokens, self.vocab_size, self.dtype)
        self.bucketed = self.graphs is not None if bucketed is None else bucketed
        self.kv = self.new_cache()

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def context_length(self) -> int | None:
        """Tokens a session may hold: its share of the pool (or what the model was trained for, if
        less), less room for the largest draft block on top."""
        trained = getattr(self.model.config, "max_position_embeddings", None) or self.pool.settings.session_tokens
        return min(int(trained), self.pool.settings.session_tokens - SLIDING_WINDOW_BLOCK_ROOM)

    @property
    def sliding_window(self) -> int | None:
        return None

    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        check_session_fits(self.context_length, prompt_tokens, max_new_tokens, "the paged engine's pool")

    def new_cache(self) -> PagedSession:
        """A session of the pool, its worst case reserved (``PoolExhausted`` when the pool is full)."""
        try:
            request_id = self.pool.open()
        except PoolExhausted:
            gc.collect()  # sessions ended but not yet collected give their reservations back
            request_id = self.pool.open()
        session = PagedSession(request_id)
        weakref.finalize(session, self._release, request_id)
        self.live_caches.add(session)
        return session

    def _release(self, request_id: str) -> None:
        """Runs when a session is collected, on any thread: its reservation returns now, its blocks on
        the pass thread (the pool's tables are only changed there)."""
        self.pool.unreserve()
        with self._closed_lock:
            self._closed.append(request_id)

    def _free_closed(self) -> None:
        with self._closed_lock:
            closed, self._closed = self._closed, []
        for request_id in closed:
            self.pool.free(request_id)

    def score_tail(
        self,
        sequence: Sequence[int],
        tail: int,
        on_exit: object = None,
        kv: PagedSession | None = None,
        exit_candidates: torch.Tensor | None = None,
        argmax_only: bool = False,
    ) -> torch.Tensor:
        """``TargetRuntime.score_tail`` on this engine (``on_exit`` never fires: no exits)."""
        cache = kv if kv is not None else self.kv
        return self.score_batch([ScoreRequest(sequence, tail, cache, argmax_only=argmax_only)])[0]  # type: ignore[arg-type]

    def score(self, request: ScoreRequest) -> torch.Tensor:
        return self.score_batch([request])[0]

    @torch.inference_mode()
    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[torch.Tensor]:
        """Every request's uncached tokens in one packed pass; per request, logits [tail, vocab]
        (float32, host) or with ``argmax_only`` their argmax ids [tail]."""
        sessions = [self._own(request.kv) for request in requests]
        if len({s.request_id for s in sessions}) != len(sessions):
            raise ValueError("a session appears twice in one batch: each needs rows of its own")
        for request in requests:
            if request.tail < 1 or request.tail > len(request.sequence):
                raise ValueError(f"tail must be in 1..{len(request.sequence)}, got {request.tail}")
        with self._compute:
            self._free_closed()
            pendings = [s.sync(r.sequence, keep_uncached=r.tail) for s, r in zip(sessions, requests)]
            rows = []
            for session, pending, request in zip(sessions, pendings, requests):
                held = len(session.tokens)
                self.pool.rewind(session.request_id, held)  # blocks past a rejection go back first
                self.pool.grow(session.request_id, held, len(pending))
                rows.append(PassRow(session.request_id, held, tuple(pending), request.tail))
            outputs = self._run(rows, [r.argmax_only for r in requests])
            for session, pending in zip(sessions, pendings):
                session.tokens.extend(pending)
            self.batch_sizes[len(requests)] += 1
        return outputs

    def _run(self, rows: list[PassRow], greedy: list[bool]) -> list[torch.Tensor]:
        """One pass; each row's wanted rows: argmax ids on the host (one copy for every greedy row of
        the pass) or float32 logits on the host."""
        fed = sum(len(row.new) for row in rows)
        bucketed = self.bucketed and fed <= self.pool.settings.pass_tokens
        hidden = int(self.model.config.hidden_size)
        per_session = self.layout == "per-session" or (self.layout == "auto" and per_session_pays(rows, hidden))
        packed = (pack_per_session if per_session else pack)(self.pool, rows, self.dtype, bucketed)
        if bucketed and self.graphs is not None and packed.query_tokens <= self.pool.settings.pass_tokens:
            logits, ids = self.graphs.run(packed)
        else:
            logits = self.model(**packed.kwargs).logits[0]  # [wanted rows (all, when bucketed), vocab]
            ids = logits.argmax(dim=-1) if any(greedy) else None
        host_ids = ids.cpu() if ids is not None and any(greedy) else None
        return [
            host_ids[wanted.start : wanted.stop]
            if wants_ids and host_ids is not None
            else logits[wanted.start : wanted.stop].float().cpu()
            for wanted, wants_ids in zip(packed.wanted_rows, greedy)
        ]

    def _own(self, cache: object) -> PagedSession:
        if not isinstance(cache, PagedSession):
            raise TypeError(f"the paged engine scores its own sessions, not a {type(cache).__name__}")
        return cache

    def rollback(self, sequence: Sequence[int], kv: PagedSession | None = None) -> None:
        """Drop what ``sequence`` no longer supports; the blocks follow on the session's next pass."""
        (kv if kv is not None else self.kv).sync(sequence, keep_uncached=1)

    def reset(self) -> None:
        self.kv.reset()
