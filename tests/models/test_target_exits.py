"""Exits read the target; they never change it."""

from __future__ import annotations

import torch

from edgespec.exits.heads import ExitHeads, ExitReading, ExitSpec
from edgespec.models.target import TargetRuntime
from tests.support.tiny_models import tiny_model

SEQUENCE = [4, 8, 15, 16, 23, 42, 7, 1]


def test_final_logits_are_bit_identical_with_and_without_exits() -> None:
    model = tiny_model("llama", seed=0)
    plain = TargetRuntime(model).score_tail(SEQUENCE, 5)
    heads = ExitHeads([ExitSpec(1), ExitSpec(2, kind="linear"), ExitSpec(3)], model.config.hidden_size)
    with torch.no_grad():
        heads.adapter(2).proj.weight.add_(0.3)  # a non-trivial adapter must not leak into the final layer
    readings: list[ExitReading] = []
    with_exits = TargetRuntime(model, heads).score_tail(SEQUENCE, 5, on_exit=readings.append)
    assert torch.equal(plain, with_exits)
    assert [r.layer for r in readings] == [1, 2, 3]
    assert all(r.logits.shape == (5, model.config.vocab_size) for r in readings)


def test_logit_lens_exit_equals_final_norm_and_head_on_the_hidden_state() -> None:
    model = tiny_model("qwen2", seed=1)
    readings: list[ExitReading] = []
    TargetRuntime(model, ExitHeads.logit_lens([2], model.config.hidden_size)).score_tail(
        SEQUENCE, 3, on_exit=readings.append
    )
    with torch.no_grad():
        hidden = model(torch.tensor([SEQUENCE]), output_hidden_states=True).hidden_states[2][0, -3:]
        expected = model.lm_head(model.model.norm(hidden)).float()
    torch.testing.assert_close(readings[0].logits, expected, rtol=1e-5, atol=1e-5)


def test_last_exit_layer_must_be_inside_the_target() -> None:
    model = tiny_model("llama", seed=0)
    try:
        TargetRuntime(model, ExitHeads.logit_lens([4], model.config.hidden_size))
    except ValueError as error:
        assert "outside 1..3" in str(error)
    else:
        raise AssertionError("an exit at the last layer must be refused")


def test_exit_heads_round_trip_through_safetensors(tmp_path) -> None:
    heads = ExitHeads([ExitSpec(2, kind="linear", threshold=0.7), ExitSpec(3)], 64, {"steps": 10})
    with torch.no_grad():
        heads.adapter(2).proj.weight.normal_()
    heads.save(tmp_path)
    loaded = ExitHeads.load(tmp_path)
    assert loaded.specs == heads.specs and loaded.metadata == {"steps": 10}
    for name, tensor in heads.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name])


def test_exits_that_can_never_stream_are_left_off_the_hot_path() -> None:
    heads = ExitHeads([ExitSpec(1, kind="linear", threshold=1.01), ExitSpec(2, kind="linear", threshold=0.5)], 64)
    with torch.no_grad():
        heads.adapter(2).proj.weight.normal_()
    kept = heads.streaming_only()
    assert kept.layers == (2,)
    assert torch.equal(kept.adapter(2).proj.weight, heads.adapter(2).proj.weight)


def test_segments_yield_each_exit_in_layer_order_then_the_final_logits() -> None:
    model = tiny_model("llama", seed=0)
    plain = TargetRuntime(model).score_tail(SEQUENCE, 4)
    items = list(
        TargetRuntime(model, ExitHeads.logit_lens([1, 3], model.config.hidden_size)).iter_segments(SEQUENCE, 4)
    )
    assert [item.layer for item in items[:-1]] == [1, 3]
    assert torch.equal(items[-1], plain)


def test_candidate_exit_scores_equal_the_full_exit_at_those_ids() -> None:
    """A candidate-id exit reads the same logits as the full LM head, only fewer of them, and
    scores them for the drafted positions (the tail's last row, the bonus, is not scored)."""
    model = tiny_model("qwen2", seed=1)
    heads = ExitHeads([ExitSpec(2, kind="linear")], model.config.hidden_size)
    with torch.no_grad():
        heads.adapter(2).proj.weight.add_(0.05 * torch.randn_like(heads.adapter(2).proj.weight))
    full: list[ExitReading] = []
    TargetRuntime(model, heads).score_tail(SEQUENCE, 4, on_exit=full.append)
    candidates = torch.tensor([[5, 9, 1], [2, 3, 4], [60, 7, 0]])
    partial: list[ExitReading] = []
    TargetRuntime(model, heads).score_tail(SEQUENCE, 4, on_exit=partial.append, exit_candidates=candidates)
    assert partial[0].candidate_ids is candidates and partial[0].logits.shape == (3, 3)
    torch.testing.assert_close(partial[0].logits, full[0].logits[:3].gather(1, candidates), rtol=1e-5, atol=1e-5)
