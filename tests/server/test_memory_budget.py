"""How many KV caches fit: serve's session limit and edge-serve's slots come from memory unless
configured, and a configured limit whose worst case cannot fit is a WARNING that names the flag."""

from __future__ import annotations

import logging

import pytest

from edgespec.cli.edge_serve import DEFAULT_SLOTS, draft_slots
from edgespec.models.draft import DraftRuntime
from edgespec.models.kv import kv_bytes_per_token, stacked_capacity
from edgespec.server.limits import DEFAULT_MAX_SESSIONS
from edgespec.server.memory_budget import KV_SHARE, KvBudget, cache_tokens, choose_limit, model_bytes, session_limit
from tests.support.tiny_models import tiny_model

GIB = 2**30
FLAGS = dict(ceiling=64, what="sessions", flag="--max-sessions", context_flags="--max-prompt-tokens")


def test_a_cache_is_sized_at_prompt_plus_new_tokens_within_the_context_with_room_to_grow() -> None:
    assert cache_tokens(8192, 4096, None) == stacked_capacity(12288)
    assert cache_tokens(8192, 4096, 4096) == stacked_capacity(4096)


def test_the_budget_is_a_share_of_the_memory_beside_the_model() -> None:
    budget = KvBudget(bytes_per_cache=GIB, memory_bytes=10 * GIB)
    assert budget.budget_bytes == int(10 * GIB * KV_SHARE)
    assert budget.caches_that_fit == int(10 * KV_SHARE)
    model = tiny_model("qwen2", seed=0)
    sized = KvBudget.for_model(model, 100, available_before_load=model_bytes(model) + 1000)
    assert sized.memory_bytes == 1000 and sized.bytes_per_cache == 100 * kv_bytes_per_token(model)


def test_without_a_configured_limit_as_many_as_fit_at_most_the_ceiling(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="edgespec.server.memory_budget"):
        assert choose_limit(None, KvBudget(GIB, 10 * GIB, 1000), **FLAGS) == 8
        assert choose_limit(None, KvBudget(GIB, 1000 * GIB, 1000), **FLAGS) == 64
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "--max-sessions" in caplog.records[0].getMessage()


def test_when_not_even_one_fits_one_is_admitted_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="edgespec.server.memory_budget"):
        assert choose_limit(None, KvBudget(4 * GIB, GIB, 1000), **FLAGS) == 1
    assert "not even one" in caplog.text and "--max-prompt-tokens" in caplog.text


def test_a_configured_limit_that_cannot_fit_is_kept_and_warned_about_with_the_numbers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The case: 64 sessions of 0.66 GiB (42.2 GiB) on a 23 GiB machine.
    budget = KvBudget(int(0.66 * GIB), 23 * GIB, 15360)
    with caplog.at_level(logging.WARNING, logger="edgespec.server.memory_budget"):
        assert choose_limit(64, budget, **FLAGS) == 64
    [record] = caplog.records
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert "--max-sessions 64 cannot fit" in message and "42.2 GiB" in message
    assert f"Lower --max-sessions to {budget.caches_that_fit}" in message


def test_a_configured_limit_that_fits_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="edgespec.server.memory_budget"):
        assert choose_limit(4, KvBudget(GIB, 100 * GIB, 1000), **FLAGS) == 4
    assert not caplog.records


def test_serves_session_limit_sizes_the_targets_caches() -> None:
    model = tiny_model("qwen2", seed=0)  # a context of 512 positions
    per_session = kv_bytes_per_token(model) * stacked_capacity(512)
    room = model_bytes(model) + int(5 * per_session / KV_SHARE) + 1
    assert session_limit(None, model, 8192, 4096, room) == 5
    assert session_limit(None, model, 8192, 4096, 10**15) == DEFAULT_MAX_SESSIONS
    assert session_limit(7, model, 8192, 4096, room) == 7


def test_edge_slots_size_the_drafts_caches_and_a_llama_cpp_draft_keeps_the_default() -> None:
    model = tiny_model("qwen2", seed=0)
    per_slot = kv_bytes_per_token(model) * stacked_capacity(512)
    room = model_bytes(model) + int(2 * per_slot / KV_SHARE) + 1
    assert draft_slots(None, DraftRuntime(model), None, room) == 2
    assert draft_slots(None, DraftRuntime(model), None, 10**15) == DEFAULT_SLOTS
    assert draft_slots(3, DraftRuntime(model), None, room) == 3
    assert draft_slots(None, object(), None, 0) == DEFAULT_SLOTS
