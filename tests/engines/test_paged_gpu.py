"""The paged engine's captured CUDA graphs (skipped without a CUDA device): a tiny random Qwen2 in
fp32 on the GPU, its passes replayed from graphs, decodes greedily exactly as `generate` on the same
GPU model, and a replayed pass over many sessions (both layouts) equals each session alone."""

from __future__ import annotations

import random

import pytest
import torch

from edgespec.engines.paged import PagedEngine, PoolSettings
from edgespec.models.target import ScoreRequest
from tests.support.tiny_models import VOCAB, tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (captured graphs)")

SETTINGS = PoolSettings(sessions=24, session_tokens=256, page_size=16, pass_tokens=512)


def gpu_engine(layout: str, graphs: bool = True) -> PagedEngine:
    return PagedEngine(tiny_model("qwen2", seed=0).to("cuda"), SETTINGS, cuda_graphs=graphs, layout=layout)


def reference(model: torch.nn.Module, prompt: list[int], count: int) -> list[int]:
    ids = torch.tensor([prompt], device="cuda")
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=count, do_sample=False, pad_token_id=0
    )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("layout", ["packed", "per-session"])
def test_replayed_graphs_decode_exactly_as_generate(layout: str) -> None:
    engine = gpu_engine(layout)
    assert engine.graphs is not None
    rng = random.Random(layout)
    for _ in range(3):
        prompt = [rng.randrange(1, VOCAB) for _ in range(rng.randrange(3, 30))]
        sequence, kv = list(prompt), engine.new_cache()
        for _ in range(24):
            sequence.append(int(engine.score(ScoreRequest(sequence, 1, kv, argmax_only=True))[0]))
        assert sequence[len(prompt) :] == reference(engine.model, prompt, 24)
    assert engine.graphs.captures >= 1 and len(engine.graphs) == engine.graphs.captures


@pytest.mark.parametrize("layout", ["packed", "per-session"])
def test_a_replayed_pass_over_many_sessions_equals_each_alone(layout: str) -> None:
    engine, eager = gpu_engine(layout), gpu_engine(layout, graphs=False)
    rng = random.Random(7)
    sequences = [[rng.randrange(1, VOCAB) for _ in range(rng.randrange(5, 80))] for _ in range(16)]
    caches = [engine.new_cache() for _ in sequences]
    engine.score_batch([ScoreRequest(s[:-5], 1, c) for s, c in zip(sequences, caches)])
    for _ in range(3):  # the first pass of a shape captures, the next ones replay
        for s, c in zip(sequences, caches):
            engine.rollback(s[:-4], c)
        together = engine.score_batch([ScoreRequest(s, 5, c) for s, c in zip(sequences, caches)])
    for sequence, got in zip(sequences, together):
        alone = eager.score(ScoreRequest(sequence, 5, eager.new_cache()))
        torch.testing.assert_close(got, alone, rtol=0, atol=1e-4)
