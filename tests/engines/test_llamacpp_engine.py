"""The llama.cpp engine's contract on the smoke model's GGUF: a multi-sequence batch scores each
session as it would alone, a rejected block leaves no trace, sequences return to the pool when
their sessions go, and `serve --engine auto` picks the engine the issue describes."""

from __future__ import annotations

import gc

import pytest
import torch

from edgespec.engines.interface import TargetEngine
from edgespec.engines.llamacpp import LlamaCppEngine
from edgespec.engines.llamacpp_context import ContextSettings
from edgespec.engines.selection import choose_engine
from edgespec.engines.transformers_engine import TransformersEngine
from edgespec.models.fetch import gguf_path
from edgespec.models.target import ScoreRequest
from tests.support.tiny_models import tiny_model

PROMPT = [1, 4093, 198, 7306, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]
SEQUENCES = 4


@pytest.fixture(scope="module")
def engine() -> LlamaCppEngine:
    return LlamaCppEngine(
        gguf_path("smollm2-135m", install=False), ContextSettings(sequences=SEQUENCES, context_per_sequence=256)
    )


def test_both_engines_are_target_engines(engine: LlamaCppEngine) -> None:
    assert isinstance(engine, TargetEngine) and engine.engine_name == "llamacpp" and engine.exits is None
    transformers = TransformersEngine(tiny_model("qwen2", seed=0))
    assert isinstance(transformers, TargetEngine) and transformers.engine_name == "transformers"


def test_a_multi_sequence_batch_scores_each_session_like_alone(engine: LlamaCppEngine) -> None:
    blocks = [PROMPT + [5, 6, 7], PROMPT[:9], PROMPT + [42]]
    tails = [4, 1, 2]
    batched = engine.score_batch([ScoreRequest(b, t, engine.new_cache()) for b, t in zip(blocks, tails)])
    for block, tail, logits in zip(blocks, tails, batched):
        alone = engine.score(ScoreRequest(block, tail, engine.new_cache()))
        assert logits.shape == (tail, engine.vocab_size)
        torch.testing.assert_close(logits, alone, rtol=0, atol=5e-2)  # different kernels: close, not equal
    assert engine.batch_sizes[3] >= 1


def test_argmax_rows_are_the_logits_argmax(engine: LlamaCppEngine) -> None:
    sequence = PROMPT + [5, 6, 7]
    ids = engine.score(ScoreRequest(sequence, 4, engine.new_cache(), argmax_only=True))
    logits = engine.score(ScoreRequest(sequence, 4, engine.new_cache()))
    assert ids.tolist() == logits.argmax(-1).tolist()


def test_a_rejected_block_is_removed_from_the_sequence(engine: LlamaCppEngine) -> None:
    """After a rejection the sequence scores exactly like one that never saw the block."""
    kv = engine.new_cache()
    engine.score(ScoreRequest(PROMPT + [5, 6, 7, 8], 5, kv))
    engine.rollback(PROMPT + [5], kv)
    assert kv.tokens == PROMPT
    again = engine.score(ScoreRequest(PROMPT + [9], 2, kv))
    fresh = engine.score(ScoreRequest(PROMPT + [9], 2, engine.new_cache()))
    torch.testing.assert_close(again, fresh, rtol=0, atol=0)


def test_a_released_sequence_is_reused_clean(engine: LlamaCppEngine) -> None:
    gc.collect()
    held = [engine.new_cache() for _ in range(SEQUENCES - 1)]  # the engine keeps one for itself
    with pytest.raises(RuntimeError, match="sequences are in use"):
        engine.new_cache()
    engine.score(ScoreRequest(PROMPT + [11, 12, 13], 1, held[0]))
    del held
    gc.collect()
    reused = engine.new_cache()
    fresh_logits = engine.score(ScoreRequest(PROMPT[:5], 1, reused))
    assert reused.tokens == PROMPT[:5]
    torch.testing.assert_close(
        fresh_logits, engine.score(ScoreRequest(PROMPT[:5], 1, engine.new_cache())), rtol=0, atol=0
    )


@pytest.mark.parametrize(
    "requested, target, device, exits, chosen",
    [
        ("auto", "smollm2-135m", "cpu", "none", "llamacpp"),
        ("auto", "smollm2-135m", "cpu", "auto", "transformers"),  # exits: only transformers has them
        ("auto", "smollm2-135m", "cuda", "none", "paged"),  # an accelerator: the paged engine
        ("auto", "smollm2-135m", "cuda", "auto", "transformers"),
        ("paged", "smollm2-135m", "cpu", "none", "paged"),
        ("llamacpp", "smollm2-135m", "cpu", "auto", "llamacpp"),  # exits are off, and serve says so
        ("transformers", "smollm2-135m", "cpu", "none", "transformers"),
    ],
)
def test_auto_picks_llamacpp_for_a_gguf_target_on_the_cpu(
    requested: str, target: str, device: str, exits: str, chosen: str
) -> None:
    assert choose_engine(requested, target, device, exits) == chosen


def test_llamacpp_refuses_an_accelerator_and_unknown_engines() -> None:
    with pytest.raises(ValueError, match="CPU"):
        choose_engine("llamacpp", "smollm2-135m", "cuda", "none")
    with pytest.raises(ValueError, match="--engine"):
        choose_engine("vllm", "smollm2-135m", "cpu", "none")


def test_a_verifier_on_llamacpp_exposes_its_metrics_with_the_kv_in_use(engine: LlamaCppEngine) -> None:
    """serve --metrics-port on the llama.cpp engine: a scrape succeeds and the KV gauge counts the
    open sessions' tokens at the engine's own bytes per token (keys and values, f16, every layer)."""
    from prometheus_client import generate_latest

    from edgespec.server.metrics import VerifierMetrics
    from edgespec.server.servicer import VerifierService

    metrics = VerifierMetrics()
    service = VerifierService(engine, None, frozenset({2}), "smoke", metrics=metrics)
    try:
        assert b"edgespec_verifier_kv_cache_bytes 0.0" in generate_latest(metrics.registry)
        # SmolLM2-135M: 30 layers, 3 KV heads of 64 dimensions.
        assert engine.kv_bytes_per_token == 2 * 30 * 3 * 64 * 2
        service.sessions["s"] = type("Open", (), {"kv": list(range(10))})()  # a session holding 10 tokens
        assert metrics.registry.get_sample_value("edgespec_verifier_kv_cache_bytes") == 10 * engine.kv_bytes_per_token
    finally:
        service.sessions.clear()
        service.shutdown()
