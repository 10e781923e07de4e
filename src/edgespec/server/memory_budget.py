"""How many KV caches fit in memory: a verifier's sessions, an edge's draft slots.

Each session (or slot) may grow a KV cache to its full context; the limit on how many are open
at once is what keeps the worst case inside the machine. ``KvBudget`` holds the arithmetic: the
bytes one cache may reach, and the memory they share, which is what was available before the
model loaded, minus the model, minus a share kept back for everything else (activations, the
prefix cache, the allocator's slack, the process itself). ``choose_limit`` derives a limit from
it when none was configured, and warns, with the numbers and the flag to change, when the one
configured cannot fit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psutil
import torch

from edgespec.models.kv import kv_bytes_per_token, stacked_capacity
from edgespec.server.limits import DEFAULT_MAX_SESSIONS

logger = logging.getLogger(__name__)

# The share of the memory left after the model that caches may fill.
KV_SHARE = 0.8
GIB = 2**30


def available_bytes(device: str) -> int:
    """Memory free for new allocations on ``device`` now: the accelerator's free memory, or the
    host's available memory (free plus reclaimable caches)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    return int(psutil.virtual_memory().available)


def model_bytes(model: torch.nn.Module) -> int:
    """The bytes of a model's weights and buffers."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def model_context(model: torch.nn.Module) -> int | None:
    """Positions the model was trained for (None when its config does not say)."""
    length = getattr(model.config, "max_position_embeddings", None)
    return int(length) if length else None


def cache_tokens(max_prompt_tokens: int, max_new_tokens: int, context_tokens: int | None) -> int:
    """Entries one cache may reach: prompt and new tokens, within the model's context (if any),
    plus the room a stacked cache keeps to grow (``stacked_capacity``)."""
    tokens = max_prompt_tokens + max_new_tokens
    if context_tokens:
        tokens = min(tokens, context_tokens)
    return stacked_capacity(tokens)


@dataclass(frozen=True)
class KvBudget:
    bytes_per_cache: int  # one session's (or slot's) cache at its full context
    memory_bytes: int  # available before the model loaded, minus the model
    tokens_per_cache: int = 0  # the context it was sized at, for the log lines

    @classmethod
    def for_model(cls, model: torch.nn.Module, tokens_per_cache: int, available_before_load: int) -> "KvBudget":
        per_cache = kv_bytes_per_token(model) * tokens_per_cache
        return cls(per_cache, max(0, available_before_load - model_bytes(model)), tokens_per_cache)

    @property
    def budget_bytes(self) -> int:
        return int(self.memory_bytes * KV_SHARE)

    @property
    def caches_that_fit(self) -> int:
        return self.budget_bytes // self.bytes_per_cache if self.bytes_per_cache else 2**31

    def worst_case_bytes(self, caches: int) -> int:
        return caches * self.bytes_per_cache


def size(num_bytes: float) -> str:
    """Bytes as an operator reads them: GiB, or MiB below one."""
    return f"{num_bytes / GIB:.1f} GiB" if num_bytes >= GIB else f"{num_bytes / 2**20:.1f} MiB"


def choose_limit(
    configured: int | None, budget: KvBudget, ceiling: int, what: str, flag: str, context_flags: str
) -> int:
    """How many ``what`` (sessions, slots) to admit: ``configured`` when given, checked against the
    budget (a WARNING with the numbers and ``flag`` when its worst case cannot fit); otherwise as
    many as fit, at most ``ceiling`` and at least one (a WARNING when even one does not fit)."""
    fit = budget.caches_that_fit
    sizes = (
        f"{size(budget.bytes_per_cache)} of KV cache each at {budget.tokens_per_cache} tokens, "
        f"{size(budget.budget_bytes)} for caches ({KV_SHARE:.0%} of {size(budget.memory_bytes)} available beside "
        "the model)"
    )
    if configured is not None:
        if configured > fit:
            logger.warning(
                "%s %d cannot fit in memory: %d %s may need %s (%s); at most %d fit. Lower %s to %d, or the "
                "tokens each may hold (%s)",
                flag,
                configured,
                configured,
                what,
                size(budget.worst_case_bytes(configured)),
                sizes,
                fit,
                flag,
                max(1, fit),
                context_flags,
            )
        return configured
    if fit < 1:
        logger.warning(
            "not even one of the %s fits in memory (%s): admitting 1 anyway. Lower the tokens each may hold (%s)",
            what,
            sizes,
            context_flags,
        )
        return 1
    chosen = min(fit, ceiling)
    logger.info("%s: %d from memory (%s; at most %d); set %s to choose", what, chosen, sizes, ceiling, flag)
    return chosen


def session_limit(
    configured: int | None,
    model: torch.nn.Module,
    max_prompt_tokens: int,
    max_new_tokens: int,
    available_before_load: int,
) -> int:
    """``serve``'s open-session limit: ``configured``, checked, or as many target KV caches as fit."""
    tokens = cache_tokens(max_prompt_tokens, max_new_tokens, model_context(model))
    return choose_limit(
        configured,
        KvBudget.for_model(model, tokens, available_before_load),
        DEFAULT_MAX_SESSIONS,
        "sessions",
        "--max-sessions",
        "--max-prompt-tokens, --max-new-tokens-limit",
    )
