"""The paged engine on the CPU (tiny random Llama/Qwen2, fp32): greedy decoding equals `generate`,
many sessions in one packed pass equal each alone, a rewind after a rejection leaves the pool
exactly as if the rejected tokens were never fed, a bucketed (graph-shaped) pass equals the
unpadded one, and a full pool refuses a session instead of failing a pass."""

from __future__ import annotations

import gc
import random

import pytest
import torch
from transformers.generation.continuous_batching.utils import build_attention_mask

from edgespec.engines.interface import TargetEngine
from edgespec.engines.paged import PagedEngine, PoolExhausted, PoolSettings
from edgespec.engines.paged_inputs import (
    PassRow,
    causal_block_mask,
    per_session_pays,
    read_bucket,
    token_bucket,
    width_bucket,
)
from edgespec.engines.timing import TimingConfig, time_engine
from edgespec.models.target import ScoreRequest
from tests.support.tiny_models import VOCAB, greedy_reference, tiny_model

SETTINGS = PoolSettings(sessions=12, session_tokens=256, page_size=16, pass_tokens=512)


LAYOUTS = ["packed", "per-session"]


def engine_for(
    family: str, bucketed: bool = False, settings: PoolSettings = SETTINGS, layout: str = "auto"
) -> PagedEngine:
    return PagedEngine(tiny_model(family, seed=0), settings, cuda_graphs=False, bucketed=bucketed, layout=layout)


def decode(engine: PagedEngine, prompt: list[int], count: int) -> list[int]:
    sequence, kv = list(prompt), engine.new_cache()
    for _ in range(count):
        sequence.append(int(engine.score(ScoreRequest(sequence, 1, kv, argmax_only=True))[0]))
    return sequence[len(prompt) :]


def prompts(count: int, seed: int = 1) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, VOCAB) for _ in range(rng.randrange(3, 40))] for _ in range(count)]


def test_the_paged_engine_is_a_target_engine() -> None:
    assert isinstance(engine_for("qwen2"), TargetEngine)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("bucketed", [False, True], ids=["exact", "bucketed"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_greedy_decoding_equals_generate(family: str, bucketed: bool, layout: str) -> None:
    engine = engine_for(family, bucketed, layout=layout)
    for prompt in prompts(3):
        assert decode(engine, prompt, 30) == greedy_reference(engine.model, prompt, 30)


@pytest.mark.parametrize("bucketed", [False, True], ids=["exact", "bucketed"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_pass_scores_every_session_like_alone(bucketed: bool, layout: str) -> None:
    """Eight sessions of different lengths, fed different amounts (a prefill chunk, verify blocks,
    a decode), greedy and sampled rows mixed: each row equals the same session scored alone."""
    engine = engine_for("qwen2", bucketed, layout=layout)
    sequences = [prompt + [5, 9, 2, 7][: index % 4 + 1] for index, prompt in enumerate(prompts(8))]
    tails = [min(len(s), 1 + index % 5) for index, s in enumerate(sequences)]
    caches = [engine.new_cache() for _ in sequences]
    for index, (sequence, cache) in enumerate(zip(sequences, caches)):  # some sessions hold part already
        if index % 2:
            engine.score(ScoreRequest(sequence[: len(sequence) // 2], 1, cache))
    requests = [
        ScoreRequest(s, tail, cache, argmax_only=bool(index % 3 == 0))
        for index, (s, tail, cache) in enumerate(zip(sequences, tails, caches))
    ]
    together = engine.score_batch(requests)
    assert engine.batch_sizes[8] == 1
    for index, (sequence, tail, got) in enumerate(zip(sequences, tails, together)):
        alone = engine.score(ScoreRequest(sequence, tail, engine.new_cache()))
        if index % 3 == 0:
            assert torch.equal(got, alone.argmax(dim=-1))
        else:
            torch.testing.assert_close(got, alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_rewind_leaves_the_pool_as_if_the_rejected_tokens_were_never_fed(layout: str) -> None:
    """Two sessions take the same 40-token block past a page boundary except for its rejected part
    (different tokens after the first 3), keep 3, and go on: every layer's entries and the next
    logits are bit for bit the same, so nothing rejected survives; the blocks wholly past the kept
    length went back to the pool; and both equal a session that never saw a rejection (to rounding:
    its prefix ran in a pass of another shape)."""
    engine = engine_for("qwen2", layout=layout)
    prompt = prompts(1, seed=4)[0][:20]
    committed = prompt + [11, 12, 13, 44]  # 3 accepted, then the correction
    generator = torch.Generator().manual_seed(0)
    outputs, sessions, grown = [], [], []
    for _ in range(2):
        rejected = [int(t) for t in torch.randint(1, VOCAB, (37,), generator=generator)]
        kv = engine.new_cache()
        engine.score(ScoreRequest(prompt + [11, 12, 13] + rejected, 41, kv))
        grown.append(len(engine.pool.blocks_of(kv.request_id)))
        outputs.append(engine.score(ScoreRequest(committed + [45], 2, kv)))
        sessions.append(kv)
    assert torch.equal(outputs[0], outputs[1])
    length = len(committed) + 1
    for layer in range(engine.num_layers):
        first, second = (engine.pool.entries(kv.request_id, layer, length) for kv in sessions)
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert len(engine.pool.blocks_of(sessions[0].request_id)) == -(-length // SETTINGS.page_size) < grown[0]
    clean = engine.score(ScoreRequest(committed + [45], 2, engine.new_cache()))
    torch.testing.assert_close(outputs[0], clean, rtol=0, atol=1e-5)


def test_rollback_alone_then_a_decode_equals_generate() -> None:
    """``rollback`` (the server's call after a verdict) followed by the next round's feed."""
    engine = engine_for("llama")
    prompt = prompts(1, seed=6)[0]
    want = greedy_reference(engine.model, prompt, 12)
    kv = engine.new_cache()
    sequence = list(prompt)
    for token in want:
        engine.score(ScoreRequest(sequence + [3, 1, 4, 1], 5, kv, argmax_only=True))  # a block that is all rejected
        engine.rollback(sequence + [token], kv)
        sequence.append(token)
        assert len(kv) <= len(sequence)
    assert decode(engine, sequence, 1) == greedy_reference(engine.model, sequence, 1)


def test_a_full_pool_refuses_the_next_session_and_a_closed_one_makes_room() -> None:
    engine = engine_for("qwen2", settings=PoolSettings(sessions=3, session_tokens=128, page_size=16, pass_tokens=128))
    held = [engine.new_cache(), engine.new_cache()]  # with the engine's own: 3 of 3
    with pytest.raises(PoolExhausted, match="full"):
        engine.new_cache()
    engine.score(ScoreRequest(prompts(1)[0][:30], 1, held[0]))  # running sessions are untouched
    del held[1]
    gc.collect()
    assert decode(engine, [4, 5, 6], 5) == greedy_reference(engine.model, [4, 5, 6], 5)  # in the freed room
    assert engine.check_fits(10, 10) is None
    with pytest.raises(ValueError, match="tokens a session may hold"):
        engine.check_fits(30, 40)


def test_profile_engine_times_every_shape_on_the_paged_engine() -> None:
    engine = engine_for("qwen2")
    measured = time_engine(engine, TimingConfig(context=8, block=3, sessions=(1, 4), repeats=2))
    assert measured["engine"] == "paged" and set(measured["fastest_ratios"]) == {"verify_x4_over_x1"}
    assert all(len(cache) == 8 for cache in list(engine.live_caches) if cache is not engine.kv)  # rolled back


def test_the_block_mask_is_transformers_own() -> None:
    past, new = [5, 0, 17], [3, 4, 1]
    cu_q, cu_k = [0], [0]
    for p, n in zip(past, new):
        cu_q.append(cu_q[-1] + n)
        cu_k.append(cu_k[-1] + p + n)
    theirs = torch.full((1, 1, cu_q[-1], cu_k[-1]), torch.finfo(torch.float32).min)
    build_attention_mask(theirs, cu_q, cu_k)
    q_session = torch.tensor([i for i, n in enumerate(new) for _ in range(n)])
    q_position = torch.tensor([p + j for p, n in zip(past, new) for j in range(n)])
    k_session = torch.tensor([i for i, (p, n) in enumerate(zip(past, new)) for _ in range(p + n)])
    k_position = torch.tensor([j for p, n in zip(past, new) for j in range(p + n)])
    assert torch.equal(causal_block_mask(q_session, q_position, k_session, k_position, torch.float32), theirs)


def test_the_cheaper_layout_is_chosen_per_pass() -> None:
    verifies = [PassRow(f"s{i}", 300, (1, 2, 3, 4, 5), 5) for i in range(64)]
    assert per_session_pays(verifies, hidden=1536)  # 64 equal blocks: packed attention is 64x the work
    one_prefill = [PassRow("s", 0, tuple(range(128)), 1), PassRow("t", 40, (1,), 1)]
    assert not per_session_pays(one_prefill, hidden=1536)  # padding the decode to 128 rows costs more


def test_buckets_pad_little() -> None:
    assert [token_bucket(n) for n in (1, 8, 9, 100)] == [8, 8, 16, 128]
    assert [width_bucket(n) for n in (1, 3, 5, 7, 100)] == [1, 3, 6, 8, 128]
    for count in (1, 256, 257, 700, 1500, 40000):
        size = read_bucket(count)
        assert count <= size <= max(256, count * 1.25 + 1)
