"""After any verdict, both KV caches equal caches built from scratch on the committed tokens."""

from __future__ import annotations

import pytest
import torch

from edgespec.core.config import GREEDY, SamplingParams
from edgespec.decoding.verification import RoundUniforms, verdict_from_logits
from edgespec.models.draft import DraftRuntime
from edgespec.models.kv import TrackedCache, forward_with_cache
from edgespec.models.target import TargetRuntime
from edgespec.sampling import seeded_generator
from tests.support.tiny_models import layer_skip_copy, tiny_model


def assert_cache_matches_scratch(kv: TrackedCache, model: torch.nn.Module, committed: list[int]) -> None:
    # Same tokens, same positions; only the order of float additions differs (blocks vs one pass).
    held = len(kv)
    assert kv.tokens == committed[:held], "the cache must only hold a prefix of the committed tokens"
    assert kv.cache.get_seq_length() == held
    scratch = TrackedCache(model.config)
    forward_with_cache(model, scratch, committed[:held], tail=1)
    for (keys, values), (ref_keys, ref_values) in zip(kv.layer_tensors(), scratch.layer_tensors()):
        assert keys.shape == ref_keys.shape
        torch.testing.assert_close(keys, ref_keys, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(values, ref_values, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("params", [GREEDY, SamplingParams(temperature=1.0, top_k=40)], ids=["greedy", "sampled"])
@pytest.mark.parametrize("draft_kind", ["self", "layer-skip"])
def test_caches_roll_back_exactly_after_every_verdict(family: str, params: SamplingParams, draft_kind: str) -> None:
    target_model = tiny_model(family, seed=0)
    draft_model = target_model
    if draft_kind == "layer-skip":
        draft_model = layer_skip_copy(tiny_model(family, seed=0), keep=3)
    target, draft = TargetRuntime(target_model), DraftRuntime(draft_model)
    committed = [5, 9, 2, 44]
    verify_gen = seeded_generator(1)
    full_blocks = 0
    for round_index in range(12):
        gamma = 1 + round_index % 5
        block = draft.draft(committed, gamma, params, seed=2)
        logits = target.score_tail(committed + block.tokens, gamma + 1)
        uniforms = None if params.greedy else RoundUniforms.draw(verify_gen, gamma)
        verdict = verdict_from_logits(logits, block.tokens, params, block.probs, uniforms)
        full_blocks += verdict.accepted == gamma
        committed += verdict.committed(block.tokens)
        target.rollback(committed)
        draft.rollback(committed)
        assert len(target.kv) == len(committed) - 1, "the target keeps every committed position but the last"
        assert_cache_matches_scratch(target.kv, target_model, committed)
        assert_cache_matches_scratch(draft.kv, draft_model, committed)
    if draft_kind == "self":
        # Sampled self-drafting accepts every token too: p == q makes min(1, p/q) == 1 (top-40
        # keeps the draft within its wire support, so q is exactly p).
        assert full_blocks == 12
    else:
        assert full_blocks < 12


def test_rollback_to_an_assumed_verdict_then_to_the_true_one() -> None:
    """Pre-drafting drafts after an assumed verdict; on a miss the draft cache must recover."""
    model = tiny_model("qwen2", seed=3)
    draft = DraftRuntime(model)
    base = [1, 2, 3, 4]
    draft.draft(base + [10, 11], 3, GREEDY)  # the assumed (wrong) continuation
    true_sequence = base + [12]
    block = draft.draft(true_sequence, 3, GREEDY)
    fresh = DraftRuntime(model).draft(true_sequence, 3, GREEDY)
    assert block.tokens == fresh.tokens
    draft.rollback(true_sequence + block.tokens[:1])
    assert_cache_matches_scratch(draft.kv, model, true_sequence + block.tokens[:1])
