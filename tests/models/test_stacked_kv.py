"""A session's cache in its two forms (per layer for a lone forward, stacked between batched
passes): the scores after any mix of batched passes, rollbacks and lone forwards equal a fresh
lone prefill of the same sequence, and each form turns into the other with its entries unchanged."""

from __future__ import annotations

import torch

from edgespec.models.kv import stacked_capacity
from edgespec.models.target import ScoreRequest, TargetRuntime
from tests.support.tiny_models import tiny_model


def fresh_scores(runtime: TargetRuntime, sequence: list[int], tail: int) -> torch.Tensor:
    return runtime.score_tail(sequence, tail, kv=runtime.new_cache())


def test_entries_survive_the_trip_to_the_stacked_form_and_back() -> None:
    runtime = TargetRuntime(tiny_model("qwen2", seed=0))
    kv = runtime.new_cache()
    runtime.score_tail([3 + i % 90 for i in range(37)], 1, kv=kv)
    before = [(k.clone(), v.clone()) for k, v in kv.layer_tensors()]
    keys, values = kv.stacked(room=5)
    assert keys.shape[1] == len(before) and keys.shape[0] >= len(kv) + 5 == 37 + 5
    assert kv.batchable
    # Position first: a session's held entries are one contiguous block (on CUDA a concatenation
    # of many sessions' blocks takes its batched one-kernel path for contiguous inputs).
    assert keys[: len(kv)].is_contiguous() and values[: len(kv)].is_contiguous()
    after = kv.layer_tensors()  # back in the per-layer form: views of the stacked storage
    for (k0, v0), (k1, v1) in zip(before, after):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)
    assert stacked_capacity(100) > 100


def test_batched_passes_rollbacks_and_lone_forwards_in_any_order_score_like_a_fresh_prefill() -> None:
    runtime = TargetRuntime(tiny_model("qwen2", seed=0))
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 90, (n,), generator=generator).tolist() for n in (7, 30, 2, 55)]
    caches = [runtime.new_cache() for _ in prompts]
    sequences = [list(p) for p in prompts]
    for step in range(12):
        # Each session appends a block of 1-5 tokens; every third step some roll back first.
        for index, sequence in enumerate(sequences):
            if step % 3 == 2 and index % 2 == step % 2 and len(sequence) > 4:
                del sequence[-3:]
            sequence.extend(torch.randint(1, 90, (1 + (step + index) % 5,), generator=generator).tolist())
        tails = [1 + (step + index) % 5 for index in range(len(sequences))]
        if step % 4 == 3:  # a lone forward for one session, the rest batched
            alone = runtime.score_tail(sequences[0], tails[0], kv=caches[0])
            assert torch.allclose(alone, fresh_scores(runtime, sequences[0], tails[0]), atol=1e-4)
            rows = range(1, len(sequences))
        else:
            rows = range(len(sequences))
        scored = runtime.score_batch([ScoreRequest(list(sequences[i]), tails[i], caches[i]) for i in rows])
        for row, logits in zip(rows, scored):
            assert torch.allclose(logits, fresh_scores(runtime, sequences[row], tails[row]), atol=1e-4), (step, row)
            assert len(caches[row]) == len(sequences[row])


def test_a_long_prompt_fed_in_chunks_grows_its_stacked_storage_and_scores_like_one_prefill() -> None:
    runtime = TargetRuntime(tiny_model("qwen2", seed=0))
    prompt = torch.randint(1, 90, (150,), generator=torch.Generator().manual_seed(2)).tolist()
    other = runtime.new_cache()
    runtime.score_tail([5, 6, 7, 8], 1, kv=other)
    chunked = runtime.new_cache()
    for end in range(16, len(prompt) + 1, 16):  # 16 tokens a pass beside another session's decode
        scored = runtime.score_batch(
            [ScoreRequest(prompt[:end], 1, chunked), ScoreRequest([5, 6, 7, 8, end % 80 + 1], 1, other)]
        )
    scored = runtime.score_batch([ScoreRequest(prompt, 1, chunked), ScoreRequest([5, 6, 7, 8, 1, 2], 2, other)])
    assert torch.allclose(scored[0], fresh_scores(runtime, prompt, 1), atol=1e-4)
    assert len(chunked) == len(prompt) - 1 + 1
