"""llama.cpp's low-level API (`llama_cpp`, the ctypes binding of `llama-cpp-python`) reduced to
what a verifier needs: one model, one context holding many sequences, and multi-sequence batches
that return logits at chosen positions.

Why the low-level API and not `llama_cpp.Llama`: `Llama` keeps one sequence per context, so
batching sessions needs the batch and memory calls themselves (`llama_batch_init`,
`llama_decode`, `llama_memory_seq_rm`, `llama_get_logits_ith`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchToken:
    """One token of a multi-sequence batch: which sequence, at which position, and whether its
    logits are read back."""

    seq: int
    pos: int
    token: int
    wants_logits: bool


@dataclass(frozen=True)
class ContextSettings:
    """How the context is sized: ``sequences`` sessions of up to ``context_per_sequence`` tokens
    each (each sequence gets its own KV stream, so one session never limits another)."""

    sequences: int = 64
    context_per_sequence: int = 2048
    batch_tokens: int = 2048  # tokens one llama_decode call takes (more are split into several)
    threads: int = 1


def _binding():  # type: ignore[no-untyped-def]
    try:
        import llama_cpp
    except ImportError:
        raise RuntimeError(
            "the llama.cpp engine needs llama-cpp-python (make install-llamacpp, or pip install llama-cpp-python)"
        ) from None
    return llama_cpp


def quiet_llama_logs() -> None:
    """Keep llama.cpp's load-time chatter (thousands of lines per model) to its errors."""
    from llama_cpp import _logger

    _logger.set_verbose(False)


class LlamaContext:
    """A GGUF model and one context with ``settings.sequences`` sequences. Not thread-safe: the
    caller runs one call at a time."""

    def __init__(self, gguf_file: str | Path, settings: ContextSettings = ContextSettings()) -> None:
        lib = _binding()
        self._lib = lib
        quiet_llama_logs()
        self.settings = settings
        lib.llama_backend_init()
        model_params = lib.llama_model_default_params()
        self._model = lib.llama_model_load_from_file(str(gguf_file).encode(), model_params)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {gguf_file}")
        params = lib.llama_context_default_params()
        params.n_seq_max = settings.sequences
        params.n_ctx = settings.sequences * settings.context_per_sequence
        params.n_batch = settings.batch_tokens
        params.n_ubatch = min(512, settings.batch_tokens)
        params.n_threads = settings.threads
        params.n_threads_batch = settings.threads
        # Each sequence in a KV stream of its own: attention reads only its session's entries.
        params.kv_unified = False
        params.no_perf = True
        self._ctx = lib.llama_init_from_model(self._model, params)
        if not self._ctx:
            lib.llama_model_free(self._model)
            raise RuntimeError(f"llama.cpp could not create a context of {params.n_ctx} tokens for {gguf_file}")
        self._memory = lib.llama_get_memory(self._ctx)
        vocab = lib.llama_model_get_vocab(self._model)
        self.vocab_size = int(lib.llama_vocab_n_tokens(vocab))
        self.num_layers = int(lib.llama_model_n_layer(self._model))
        # Keys and values of every layer in llama.cpp's default f16 cache: what one token costs.
        head_dim = int(lib.llama_model_n_embd(self._model)) // int(lib.llama_model_n_head(self._model))
        self.kv_bytes_per_token = 2 * self.num_layers * int(lib.llama_model_n_head_kv(self._model)) * head_dim * 2
        self.trained_context = int(lib.llama_model_n_ctx_train(self._model))
        self.context_per_sequence = int(lib.llama_n_ctx_seq(self._ctx))
        self._batch = lib.llama_batch_init(settings.batch_tokens, 0, 1)
        logger.info(
            "llama.cpp context for %s: %d sequences x %d tokens, %d threads",
            Path(gguf_file).name,
            settings.sequences,
            self.context_per_sequence,
            settings.threads,
        )

    def remove_from(self, seq: int, start: int) -> None:
        """Drop sequence ``seq``'s entries at positions >= ``start`` (0: the whole sequence)."""
        if not self._lib.llama_memory_seq_rm(self._memory, seq, start, -1):
            raise RuntimeError(f"llama.cpp could not remove positions {start}.. of sequence {seq}")

    def copy_sequence(self, source: int, target: int) -> None:
        """Give sequence ``target`` every KV entry of ``source`` (``target`` must be empty). Each
        sequence has a KV stream of its own, and llama.cpp copies between streams only whole: a
        caller wanting a prefix removes the rest afterwards (``remove_from``)."""
        self._lib.llama_memory_seq_cp(self._memory, source, target, -1, -1)

    def decode(self, tokens: Sequence[BatchToken], rows: "RowReader") -> None:
        """Run ``tokens`` (any mix of sequences) through the model, in as few ``llama_decode``
        calls as the batch size allows; ``rows`` reads each wanted position's logits while they
        are valid (until the next call)."""
        limit = self.settings.batch_tokens
        for start in range(0, len(tokens), limit):
            chunk = tokens[start : start + limit]
            self._fill(chunk)
            status = self._lib.llama_decode(self._ctx, self._batch)
            if status != 0:
                raise RuntimeError(f"llama_decode failed with status {status} (a batch of {len(chunk)} tokens)")
            for index, entry in enumerate(chunk):
                if entry.wants_logits:
                    rows.read(entry, self.logits_row(index))

    def logits_row(self, index: int) -> np.ndarray:
        """The logits of the last decode's ``index``-th batch token, float32 [vocab]: a view into
        llama.cpp's output buffer, valid until the next decode."""
        pointer = self._lib.llama_get_logits_ith(self._ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.vocab_size,))

    def _fill(self, chunk: Sequence[BatchToken]) -> None:
        batch = self._batch
        batch.n_tokens = len(chunk)
        for index, entry in enumerate(chunk):
            batch.token[index] = entry.token
            batch.pos[index] = entry.pos
            batch.n_seq_id[index] = 1
            batch.seq_id[index][0] = entry.seq
            batch.logits[index] = 1 if entry.wants_logits else 0

    def close(self) -> None:
        lib = self._lib
        if getattr(self, "_ctx", None):
            lib.llama_batch_free(self._batch)
            lib.llama_free(self._ctx)
            lib.llama_model_free(self._model)
            self._ctx = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown may have torn the binding down
            pass


class RowReader:
    """What a decode does with each wanted row of logits (see ``LlamaContext.decode``)."""

    def read(self, entry: BatchToken, logits: np.ndarray) -> None:
        raise NotImplementedError
