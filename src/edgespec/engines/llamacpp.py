"""The llama.cpp engine: the target's own GGUF through llama.cpp's kernels, sessions as sequences
of one context, every pass one multi-sequence batch.

A pass takes each session's uncached tokens (a verify block, a cloud-ar token, a prefill chunk)
into one ``llama_decode`` batch, each token tagged with its session's sequence id and true
position, logits kept at every position a verdict reads. Rolling back after a rejection is a
``llama_memory_seq_rm`` of the rejected positions, done on the pass thread right before the
session's next tokens are fed (so a rollback decided on another thread never races a decode).
A session starting from a stored prompt prefix (``llamacpp_prefix.py``) has the stored sequence
copied into its own the same way, on the pass thread before its first feed.

Verdicts: a greedy row is the argmax of llama.cpp's logits row, read in place. A sampled verdict
(rejection sampling) needs the target's whole distribution at every block position, so each of
those rows is copied into a float32 torch tensor for the shared verification maths: vocab x 4
bytes per position (0.6 MB for a 151,936-token vocabulary, a few MB per block, about a millisecond),
small beside the weights a pass reads.

No early exits: llama.cpp gives no intermediate hidden states cheaply, so this engine serves the
guess-based modes (sd, pre-drafting from send-time guesses) and a session asking for early verdicts
gets none.
"""

from __future__ import annotations

import collections
import gc
import logging
import threading
import weakref
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from edgespec.engines.interface import check_session_fits
from edgespec.engines.llamacpp_context import BatchToken, ContextSettings, LlamaContext, RowReader
from edgespec.engines.llamacpp_prefix import LlamaPrefixCache
from edgespec.models.kv import valid_prefix
from edgespec.models.target import SLIDING_WINDOW_BLOCK_ROOM, ScoreRequest

logger = logging.getLogger(__name__)


class LlamaSequence:
    """A session's sequence in the shared context: its id and the tokens its KV entries hold.

    The context may still hold entries past ``tokens`` (rolled back but not yet removed): the
    engine removes them before it next feeds this sequence. When the object is collected its
    sequence id goes back to the engine's pool."""

    batchable = True

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.tokens: list[int] = []
        # A stored prefix to copy in before this sequence is next fed (the source stays alive while
        # it waits), so a copy decided on another thread never races a decode.
        self.copy_from: LlamaSequence | None = None
        # A sequence kept by a prefix store: it is copied from, never fed again.
        self.frozen = False

    def __len__(self) -> int:
        return len(self.tokens)

    def sync(self, sequence: Sequence[int], keep_uncached: int = 1) -> list[int]:
        """Keep the common prefix with ``sequence`` (minus its last ``keep_uncached`` tokens,
        whose logits the caller needs); the tokens still to feed."""
        common = valid_prefix(self.tokens, sequence, keep_uncached)
        if common < len(self.tokens):
            logger.debug("sequence %d rollback %d -> %d", self.seq_id, len(self.tokens), common)
            self.tokens = self.tokens[:common]
        return [int(t) for t in sequence[common:]]

    def truncate(self, length: int) -> None:
        self.tokens = self.tokens[: max(0, length)]

    def reset(self) -> None:
        self.tokens = []


class _Rows(RowReader):
    """Collects each request's wanted rows during a decode: argmax ids or float32 logits."""

    def __init__(self, requests: Sequence[ScoreRequest], vocab: int) -> None:
        self._index = {request.kv.seq_id: row for row, request in enumerate(requests)}  # type: ignore[union-attr]
        self._first = [len(r.sequence) - r.tail for r in requests]  # position of each request's first tail row
        self._requests = requests
        self.outputs: list[torch.Tensor] = [
            torch.empty(r.tail, dtype=torch.long)
            if r.argmax_only
            else torch.empty((r.tail, vocab), dtype=torch.float32)
            for r in requests
        ]

    def read(self, entry: BatchToken, logits: np.ndarray) -> None:
        row = self._index[entry.seq]
        position = entry.pos - self._first[row]
        if self._requests[row].argmax_only:
            self.outputs[row][position] = int(np.argmax(logits))
        else:
            self.outputs[row][position] = torch.from_numpy(logits)  # copies the row out of llama.cpp's buffer


class LlamaCppEngine:
    """A ``TargetEngine`` on llama.cpp. Thread-safe for scoring (one pass at a time)."""

    engine_name = "llamacpp"
    exits = None

    def __init__(self, gguf_file: str | Path, settings: ContextSettings = ContextSettings()) -> None:
        # One sequence more than sessions: the engine's own default sequence (``kv``).
        self.context = LlamaContext(gguf_file, settings)
        self.gguf_file = Path(gguf_file)
        self.num_layers = self.context.num_layers
        self.kv_bytes_per_token = self.context.kv_bytes_per_token
        self._pool_lock = threading.Lock()
        self._free: list[int] = list(range(settings.sequences - 1, -1, -1))
        self._compute = threading.Lock()
        self.live_caches: weakref.WeakSet[LlamaSequence] = weakref.WeakSet()
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self.tokens_fed = 0  # every token any pass has fed: what prefix reuse saves shows here
        # Prefix stores holding sequences, asked to give one back when the pool runs dry.
        self.prefix_stores: weakref.WeakSet[LlamaPrefixCache] = weakref.WeakSet()
        self.kv = self.new_cache()

    @property
    def vocab_size(self) -> int:
        return self.context.vocab_size

    @property
    def context_length(self) -> int | None:
        """Tokens a session may hold: the context one sequence gets (or what the model was trained
        for, if less), less room for the largest draft block on top."""
        return min(self.context.trained_context, self.context.context_per_sequence - SLIDING_WINDOW_BLOCK_ROOM)

    @property
    def sliding_window(self) -> int | None:
        return None

    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        check_session_fits(self.context_length, prompt_tokens, max_new_tokens, "the llama.cpp engine's context")

    def new_cache(self) -> LlamaSequence:
        """A sequence of its own for a new session (its stale entries go before its first feed)."""
        seq_id = self._take_free()
        if seq_id is None:
            gc.collect()  # sessions ended but not yet collected give their sequences back
            seq_id = self._take_free()
        while seq_id is None and self._reclaim_from_stores():
            seq_id = self._take_free()  # an evicted entry's id comes back unless a pending copy holds it
        if seq_id is None:
            raise RuntimeError(
                f"all {self.context.settings.sequences} llama.cpp sequences are in use: "
                "start the engine with more sequences (serve --max-sessions)"
            )
        sequence = LlamaSequence(seq_id)
        weakref.finalize(sequence, self._release, seq_id)
        self.live_caches.add(sequence)
        return sequence

    def _take_free(self) -> int | None:
        with self._pool_lock:
            return self._free.pop() if self._free else None

    def new_prefix_store(self, max_tokens: int) -> LlamaPrefixCache:
        """A prompt-prefix store on this engine's sequences (``serve --prefix-cache-tokens``)."""
        return LlamaPrefixCache(self, max_tokens)

    def _reclaim_from_stores(self) -> bool:
        """Ask the prefix stores to drop their least recently used entry: sessions come first."""
        return any(store.evict_oldest() for store in list(self.prefix_stores))

    def _release(self, seq_id: int) -> None:
        with self._pool_lock:
            self._free.append(seq_id)

    def score_tail(
        self,
        sequence: Sequence[int],
        tail: int,
        on_exit: object = None,
        kv: LlamaSequence | None = None,
        exit_candidates: torch.Tensor | None = None,
        argmax_only: bool = False,
    ) -> torch.Tensor:
        """``TargetRuntime.score_tail`` on this engine (``on_exit`` never fires: no exits)."""
        cache = kv if kv is not None else self.kv
        request = ScoreRequest(sequence, tail, cache, argmax_only=argmax_only)  # type: ignore[arg-type]
        return self.score_batch([request])[0]

    def score(self, request: ScoreRequest) -> torch.Tensor:
        return self.score_batch([request])[0]

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[torch.Tensor]:
        """Every request's uncached tokens in one multi-sequence batch; per request, logits
        [tail, vocab] (float32, host) or with ``argmax_only`` their argmax ids [tail]."""
        sequences = [self._own(request.kv) for request in requests]
        if len({s.seq_id for s in sequences}) != len(sequences):
            raise ValueError("a session appears twice in one batch: each needs a sequence of its own")
        if any(s.frozen for s in sequences):
            raise ValueError("a sequence kept by a prefix store is copied from, never fed")
        for request in requests:
            if request.tail < 1 or request.tail > len(request.sequence):
                raise ValueError(f"tail must be in 1..{len(request.sequence)}, got {request.tail}")
        with self._compute:
            pendings = [s.sync(r.sequence, keep_uncached=r.tail) for s, r in zip(sequences, requests)]
            batch: list[BatchToken] = []
            for sequence, pending, request in zip(sequences, pendings, requests):
                self._copy_pending_prefix(sequence)
                held = len(sequence.tokens)
                self.context.remove_from(sequence.seq_id, held)  # entries rolled back since its last pass
                first_read = len(pending) - request.tail
                batch += [
                    BatchToken(sequence.seq_id, held + offset, token, offset >= first_read)
                    for offset, token in enumerate(pending)
                ]
            rows = _Rows(requests, self.vocab_size)
            self.context.decode(batch, rows)
            for sequence, pending in zip(sequences, pendings):
                sequence.tokens.extend(pending)
            self.batch_sizes[len(requests)] += 1
            self.tokens_fed += len(batch)
        return rows.outputs

    def _copy_pending_prefix(self, sequence: LlamaSequence) -> None:
        """Copy in the stored prefix a new session starts from (its own stale entries go first)."""
        source = sequence.copy_from
        if source is None:
            return
        self.context.remove_from(sequence.seq_id, 0)
        self.context.copy_sequence(source.seq_id, sequence.seq_id)
        sequence.copy_from = None  # the source may go back to the pool now

    def _own(self, cache: object) -> LlamaSequence:
        if not isinstance(cache, LlamaSequence):
            raise TypeError(f"the llama.cpp engine scores its own sequences, not a {type(cache).__name__}")
        return cache

    def rollback(self, sequence: Sequence[int], kv: LlamaSequence | None = None) -> None:
        (kv if kv is not None else self.kv).sync(sequence, keep_uncached=1)

    def reset(self) -> None:
        self.kv.reset()

    def close(self) -> None:
        self.context.close()
