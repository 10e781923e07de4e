"""Recorded speculative rounds carry what candidate-id exits and the gain rule need, and a
perfect exit scoring only the draft's candidates names exactly the corrections among them."""

from __future__ import annotations

from pathlib import Path

import torch

from edgespec.exits.evaluation import exit_outcomes, guess_outcomes
from edgespec.exits.recorded_rounds import load_rounds, record_rounds
from edgespec.models.draft import EXIT_CANDIDATES
from edgespec.models.exit_heads import ExitHeads
from tests.support.tiny_models import layer_skip_copy, tiny_model

GAMMA = 3


def pass_through_target() -> torch.nn.Module:
    """The last layer passes the residual through: the lens after layer 3 is the final layer."""
    model = tiny_model("qwen2", seed=0)
    with torch.no_grad():
        model.model.layers[-1].self_attn.o_proj.weight.zero_()
        model.model.layers[-1].mlp.down_proj.weight.zero_()
    return model


def test_candidate_exit_outcomes_on_recorded_rounds(tmp_path: Path) -> None:
    target = pass_through_target()
    draft = layer_skip_copy(tiny_model("qwen2", seed=0), keep=2)
    prompts = iter([("a", [4, 8, 15, 16]), ("b", [23, 42, 7]), ("c", [1, 2, 3, 5, 8])])
    record_rounds(target, draft, prompts, tmp_path, [2, 3], 3, GAMMA, 24)
    rounds = load_rounds(tmp_path)
    count = rounds["verdict"].shape[0]
    assert rounds["candidates"].shape == (count, GAMMA, EXIT_CANDIDATES)
    assert torch.equal(rounds["candidates"][:, :, 0], rounds["draft"])  # the draft's own token first
    assert rounds["guess_bonus"].shape == (count,)

    norm, head = target.model.norm, target.lm_head.weight
    lens = ExitHeads.logit_lens([3], target.config.hidden_size)
    full = exit_outcomes(lens, rounds, norm, head)[3]
    assert bool(full["correct"].all())  # the lens after layer 3 is the final layer
    partial = exit_outcomes(lens, rounds, norm, head, candidates=True)[3]
    guess = guess_outcomes(rounds)
    assert 0 < guess["rejections"] < count and guess["correction_in_candidates"] > 0
    # A candidate exit streams only rejections, and names every correction that is a candidate.
    assert torch.equal(partial["streams"], partial["rejects"])
    assert int((partial["correct"] & partial["rejects"]).sum()) == guess["correction_in_candidates"]
    # On rounds the final verdict accepts whole, it agrees (but leaves the bonus unscored).
    accepted_whole = rounds["verdict"][:, 0] == GAMMA
    assert not bool(partial["rejects"][accepted_whole].any())
