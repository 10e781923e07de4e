"""The server's limits: how many sessions and queued jobs it admits and how big a batched pass may
grow (``AdmissionLimits``, with the device policy that picks a pass's budget), and what one session
may ask for and how long it may live (``SessionLimits``). Plain values, so memory stays bounded
whatever clients do; the checks that apply them live in ``admission.py`` and ``session.py``."""

from __future__ import annotations

from dataclasses import dataclass

# Prompt tokens a prefill feeds per pass on an accelerator, where a pass costs about the same for a
# few tokens a row or this many.
ACCELERATOR_PREFILL_CHUNK = 128
# Open sessions when none is configured and memory allows more (``serve`` derives fewer from memory).
DEFAULT_MAX_SESSIONS = 64


@dataclass(frozen=True)
class AdmissionLimits:
    max_sessions: int = DEFAULT_MAX_SESSIONS  # open sessions; one more is refused with BUSY
    max_queued: int = 256  # jobs waiting for the model; one more is refused with BUSY
    max_batch: int = 32  # rows (sessions) per forward pass
    # The cost budget of one forward pass in padded token-rows: rows x the longest row's fed
    # tokens (8 verify rows of 5 tokens: 40; the same plus a 32-token chunk: 9 x 32 = 288). The
    # default holds --max-batch rows of the longest usual block (32 x 9), so only chunked prefills
    # meet it; with chunks on a compute-bound CPU a smaller budget keeps each pass short.
    max_batch_rows: int = 512
    # Prompt tokens a prefill feeds per pass, riding with other sessions' rounds; 0 (default): a
    # prefill runs alone, the whole prompt in one pass. On a compute-bound CPU, clients starting
    # together got their first tokens no sooner with chunks and decoded slower (more, smaller
    # passes). An accelerator's default is `batch_budget`'s.
    prefill_chunk: int = 0

    @staticmethod
    def batch_budget(
        device: str, max_batch: int, prefill_chunk: int | None, max_batch_rows: int | None
    ) -> tuple[int, int]:
        """(prefill_chunk, max_batch_rows) for a target on ``device``, each unless given. On an
        accelerator a pass costs about the same for a few tokens a row or a full chunk, so
        prefills ride with the rounds in chunks and the budget holds every row at that width:
        with many clients on a GPU that cut the time to first token and raised the slowest
        clients' rate. On a CPU, chunks did not pay (the class defaults)."""
        accelerator = not device.startswith("cpu")
        chunk = prefill_chunk if prefill_chunk is not None else (ACCELERATOR_PREFILL_CHUNK if accelerator else 0)
        if max_batch_rows is None:
            max_batch_rows = max(512, max_batch * chunk) if accelerator else 512
        return chunk, max_batch_rows

    def __post_init__(self) -> None:
        for name in ("max_sessions", "max_queued", "max_batch", "max_batch_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"admission limits must be >= 1: {name} is {getattr(self, name)}")
        if self.prefill_chunk < 0:
            raise ValueError(f"prefill_chunk must be >= 0 (0: prefills run alone), got {self.prefill_chunk}")


@dataclass(frozen=True)
class SessionLimits:
    max_prompt_tokens: int = 8192
    max_new_tokens: int = 4096
    max_block: int = 64
    # A session that sends nothing for this long, or lives longer than this, is ended (EXPIRED)
    # so a vanished client cannot pin its KV cache.
    idle_timeout_s: float = 120.0
    max_lifetime_s: float = 3600.0
