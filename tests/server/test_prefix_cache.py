"""The prefix cache: a cache restored for a shared prefix feeds only the rest, and greedy
decoding on it equals `generate` on the whole prompt (fp32); snapshots are private; memory is
bounded."""

from __future__ import annotations

import pytest

from edgespec.models.kv import TrackedCache, forward_with_cache
from edgespec.server.prefix_cache import PrefixCache
from tests.support.tiny_models import greedy_reference, tiny_model

PREFIX = [3, 17, 42, 8, 9, 61, 5, 22, 71, 30, 11, 4]


def fill(model, sequence: list[int]) -> TrackedCache:
    kv = TrackedCache(model.config)
    forward_with_cache(model, kv, kv.sync(sequence, keep_uncached=1), 1)
    return kv


def greedy_on(model, kv: TrackedCache, prompt: list[int], new_tokens: int) -> tuple[list[int], int]:
    """Greedy decoding on top of ``kv``; also how many prompt tokens the first forward fed."""
    sequence = list(prompt)
    fed_first = 0
    for step in range(new_tokens):
        pending = kv.sync(sequence, keep_uncached=1)
        if step == 0:
            fed_first = len(pending)
        logits = forward_with_cache(model, kv, pending, 1)
        sequence.append(int(logits[-1].argmax()))
    return sequence[len(prompt) :], fed_first


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_reused_prefix_feeds_only_the_rest_and_equals_generate(family: str) -> None:
    model = tiny_model(family, seed=0)
    store = PrefixCache(model.config, min_reuse=4)
    first = PREFIX + [50, 51, 52]
    assert store.offer(fill(model, first))
    second = PREFIX + [60, 61, 62, 63]  # the next decision: same prefix, new observation
    kv, reused = store.acquire(second)
    assert reused == len(PREFIX)
    tokens, fed = greedy_on(model, kv, second, 12)
    assert fed == len(second) - len(PREFIX)
    assert tokens == greedy_reference(model, second, 12)


def test_acquired_caches_are_private_copies() -> None:
    model = tiny_model("qwen2", seed=0)
    store = PrefixCache(model.config, min_reuse=4)
    store.offer(fill(model, PREFIX + [50]))
    kv, reused = store.acquire(PREFIX + [70, 71])
    greedy_on(model, kv, PREFIX + [70, 71], 4)  # decodes, truncates, appends on the copy
    kv.truncate(3)
    again, reused_again = store.acquire(PREFIX + [80, 81])
    assert reused_again == reused == len(PREFIX)
    tokens, _ = greedy_on(model, again, PREFIX + [80, 81], 6)
    assert tokens == greedy_reference(model, PREFIX + [80, 81], 6)


def test_short_matches_and_misses_start_empty() -> None:
    model = tiny_model("qwen2", seed=0)
    store = PrefixCache(model.config, min_reuse=8)
    store.offer(fill(model, PREFIX))
    kv, reused = store.acquire(PREFIX[:5] + [90, 91, 92, 93, 94])
    assert (reused, len(kv)) == (0, 0)
    kv, reused = store.acquire([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert reused == 0 and store.stats.hits == 0 and store.stats.lookups == 2
    # The whole stored prompt again: its last token is fed again (its logits are needed).
    kv, reused = store.acquire(PREFIX)
    assert reused == len(PREFIX) - 1


def test_memory_stays_bounded_and_least_recently_used_goes_first() -> None:
    model = tiny_model("qwen2", seed=0)
    store = PrefixCache(model.config, max_tokens=30, min_reuse=4)
    a, b, c = ([i] + PREFIX for i in (1, 2, 90))
    store.offer(fill(model, a))
    store.offer(fill(model, b))
    store.acquire(a + [5])  # a is used again: b is now the oldest
    store.offer(fill(model, c))
    assert store.tokens_held <= 30 and store.stats.evictions == 1
    assert store.acquire(b + [5])[1] == 0 and store.acquire(a + [5])[1] == len(a)
    # An extension replaces the entry it extends; a covered prefix is not stored twice.
    assert store.offer(fill(model, a + [7, 8]))
    assert not store.offer(fill(model, a))
    assert len(store) == 2
    with pytest.raises(ValueError):
        PrefixCache(model.config, max_tokens=0)
