"""A draft backend on llama.cpp (`llama-cpp-python`), reading the same GGUF file.

The draft needs no exits, so it can run on the fastest engine the edge has: llama.cpp runs the
quantised Qwen2.5-Coder-0.5B several times faster than `transformers` on one CPU thread. The
target still decides every token, so the backend changes speed, never the output.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from edgespec.models.draft import DraftRuntime
from edgespec.models.kv import valid_prefix

logger = logging.getLogger(__name__)


class LlamaCppDraft(DraftRuntime):
    def __init__(self, gguf_file: str | Path, n_ctx: int = 4096, threads: int = 1) -> None:
        try:
            from llama_cpp import Llama
        except ImportError:
            raise RuntimeError(
                "the llama.cpp draft backend needs llama-cpp-python "
                "(make install-llamacpp, or pip install llama-cpp-python)"
            ) from None
        # logits_all=False: only the last position's logits are ever needed when drafting.
        self.llm: Any = Llama(
            model_path=str(gguf_file),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=False,
            verbose=False,
        )
        self.n_ctx = n_ctx
        self.vocab_size = int(self.llm.n_vocab())
        logger.info("llama.cpp draft %s (ctx %d, %d threads)", gguf_file, n_ctx, threads)

    def _sync(self, sequence: Sequence[int]) -> list[int]:
        if len(sequence) >= self.n_ctx:
            raise ValueError(f"sequence of {len(sequence)} tokens exceeds the draft context of {self.n_ctx}")
        common = valid_prefix(self.llm.input_ids[: self.llm.n_tokens], sequence)
        # llama.cpp's eval() removes every KV entry from n_tokens on before decoding.
        self.llm.n_tokens = common
        return [int(t) for t in sequence[common:]]

    def _feed(self, tokens: Sequence[int]) -> torch.Tensor:
        self.llm.eval(list(tokens))
        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.vocab_size,))
        return torch.from_numpy(logits.copy())

    def reset(self) -> None:
        self.llm.reset()
