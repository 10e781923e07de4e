"""Prompt-prefix reuse on the llama.cpp engine (smoke model's GGUF): a session starting from a
stored sequence's copy decodes exactly what a fresh prefill decodes, feeds only the tokens past
the shared prefix, and a store never keeps a session out of the engine's sequences."""

from __future__ import annotations

import gc

import pytest

from edgespec.client.edge_client import EdgeClient
from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.engines.llamacpp import LlamaCppEngine
from edgespec.engines.llamacpp_context import ContextSettings
from edgespec.engines.llamacpp_prefix import LlamaPrefixCache
from edgespec.models.fetch import gguf_path
from edgespec.models.target import ScoreRequest
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.servicer import VerifierService

# A chat-formatted SmolLM2 prompt (token ids) and two follow-ups sharing it as a prefix.
SYSTEM = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 2, 198]
FIRST = SYSTEM + [1, 4093, 198, 7306, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]
SECOND = SYSTEM + [1, 4093, 198, 19161, 253, 1789, 1789, 2257, 338, 3060, 2, 198, 1, 520, 9531, 198]
NEW_TOKENS = 12
SEQUENCES = 6


@pytest.fixture(scope="module")
def engine() -> LlamaCppEngine:
    return LlamaCppEngine(
        gguf_path("smollm2-135m", install=False), ContextSettings(sequences=SEQUENCES, context_per_sequence=256)
    )


def greedy(engine: LlamaCppEngine, prompt: list[int], store: LlamaPrefixCache | None) -> tuple[list[int], object]:
    """One token at a time (the engine's cloud-ar); the prefill scores everything but the last
    prompt token first, as a server session does. The tokens and the session's sequence."""
    if store is None:
        kv, reused = engine.new_cache(), 0
    else:
        kv, reused = store.acquire(prompt[:-1])
    assert kv.tokens == prompt[:reused]
    engine.score(ScoreRequest(prompt[:-1], 1, kv, argmax_only=True))
    sequence = list(prompt)
    for _ in range(NEW_TOKENS):
        sequence.append(int(engine.score(ScoreRequest(sequence, 1, kv, argmax_only=True))[0]))
    return sequence[len(prompt) :], kv


def fed_by(engine: LlamaCppEngine, prompt: list[int], store: LlamaPrefixCache | None) -> tuple[list[int], int]:
    before = engine.tokens_fed
    tokens, kv = greedy(engine, prompt, store)
    if store is not None:
        store.offer(kv)
    return tokens, engine.tokens_fed - before


def test_a_reused_prefix_decodes_like_a_fresh_prefill_and_feeds_less(engine: LlamaCppEngine) -> None:
    fresh_first, fed_fresh_first = fed_by(engine, FIRST, None)
    fresh_second, fed_fresh_second = fed_by(engine, SECOND, None)
    store = LlamaPrefixCache(engine, max_tokens=4096)
    stored_first, _ = fed_by(engine, FIRST, store)  # nothing stored yet: a full prefill, then kept
    assert stored_first == fresh_first and len(store) == 1
    again_first, fed_again_first = fed_by(engine, FIRST, store)
    assert again_first == fresh_first
    # A fresh session feeds the prompt and every decoded token but the last; a reused one only its
    # prompt's last two tokens (the prefill scores one, the first decode step feeds the other).
    assert fed_fresh_first == len(FIRST) - 1 + NEW_TOKENS
    assert fed_again_first == 2 + NEW_TOKENS - 1
    reused_second, fed_reused_second = fed_by(engine, SECOND, store)
    assert reused_second == fresh_second
    assert fed_fresh_second - fed_reused_second == len(SYSTEM) + 3  # the shared prefix (SYSTEM, "<|im_start|>user\n")
    assert store.stats.hits == 2 and store.stats.reused_tokens == (len(FIRST) - 2) + len(SYSTEM) + 3


def test_a_stored_sequence_is_never_fed_again(engine: LlamaCppEngine) -> None:
    store = LlamaPrefixCache(engine, max_tokens=4096)
    _, kv = greedy(engine, FIRST, None)
    assert store.offer(kv) and kv.frozen
    with pytest.raises(ValueError, match="never fed"):
        engine.score(ScoreRequest(FIRST + [5], 1, kv))


def test_short_or_covered_prefixes_are_not_stored(engine: LlamaCppEngine) -> None:
    store = LlamaPrefixCache(engine, max_tokens=4096, min_reuse=8)
    short = engine.new_cache()
    engine.score(ScoreRequest(FIRST[:4], 1, short))
    assert not store.offer(short)
    _, kv = greedy(engine, FIRST, None)
    assert store.offer(kv)
    _, again = greedy(engine, FIRST, None)
    assert not store.offer(again, length=len(FIRST))  # an entry already covers it


def test_a_store_gives_its_sequences_back_when_sessions_need_them(engine: LlamaCppEngine) -> None:
    gc.collect()
    store = LlamaPrefixCache(engine, max_tokens=100_000)
    for prompt in (FIRST, SECOND):
        _, kv = greedy(engine, prompt, None)
        store.offer(kv)
        del kv
    assert len(store) == 2
    held = [engine.new_cache() for _ in range(SEQUENCES - 1)]  # the engine keeps one; both entries evicted
    assert len(store) == 0 and store.stats.evictions == 2
    del held
    gc.collect()


def test_the_token_budget_evicts_the_least_recently_used(engine: LlamaCppEngine) -> None:
    store = LlamaPrefixCache(engine, max_tokens=len(FIRST) + NEW_TOKENS)
    for prompt in (FIRST, SECOND):
        _, kv = greedy(engine, prompt, None)
        store.offer(kv)
    assert len(store) == 1 and store.stats.evictions == 1
    _, reused = store.acquire(SECOND)
    assert reused == len(SECOND) - 1  # the newer one stayed


def test_a_server_session_reuses_a_finished_sessions_prompt(engine: LlamaCppEngine) -> None:
    """Through the real server: the same tokens as without a store, and the prefill skipped."""
    gc.collect()
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=4)
    outputs, fed = {}, {}
    for cache_tokens in (0, 4096):
        service = VerifierService(engine, tokenizer=None, eos_ids=frozenset(), prefix_cache_tokens=cache_tokens)
        running = RunningServer(service, ServerConfig(port=0))
        try:
            client = EdgeClient(f"127.0.0.1:{running.port}", None)
            client.generate(FIRST, Mode.CLOUD_AR, config)  # fills the store (when there is one)
            before = engine.tokens_fed
            outputs[cache_tokens] = client.generate(FIRST, Mode.CLOUD_AR, config).tokens
            fed[cache_tokens] = engine.tokens_fed - before
        finally:
            running.stop()
    assert outputs[4096] == outputs[0]
    assert fed[0] - fed[4096] == len(FIRST) - 2  # all of the prefill but its last token (whose logits it reads)
