"""The pre-draft modes run for real in process (the round core on the virtual clock): greedy
output equals `generate`, with pre-draft hits, misses and pipelined rounds counted as over the
network, for a perfect exit (every early verdict right), a poor one, and a useless draft."""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import pytest
import torch

from edgespec.core.config import GenerationConfig, GenerationResult, SamplingParams
from edgespec.core.modes import Mode
from edgespec.drivers.backend_interface import VerifyResult
from edgespec.drivers.local_engine import LocalEngine
from edgespec.drivers.real_backends import RealCloud, RealEdge
from edgespec.drivers.virtual_clock import ClientSpec, VirtualClock
from edgespec.drivers.virtual_devices import Link
from edgespec.exits.heads import ExitHeads, ExitSpec
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from tests.support.tiny_models import greedy_reference, layer_skip_copy, tiny_model

PROMPT = [3, 17, 42, 8, 9, 61]
NEW_TOKENS = 32
PREDRAFT_MODES = [Mode.SD_EE, Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED]


PERFECT = (3,)  # on the target with a pass-through last layer, the lens after layer 3 is final
POOR = (2,)


@lru_cache(maxsize=None)
def target_model() -> torch.nn.Module:
    """Zeroing the last layer's output projections makes it pass the residual through, so the
    logit lens after layer 3 *is* the final layer: its early verdicts are always right."""
    model = tiny_model("qwen2", seed=0)
    with torch.no_grad():
        model.model.layers[-1].self_attn.o_proj.weight.zero_()
        model.model.layers[-1].mlp.down_proj.weight.zero_()
    return model


def engine(
    exit_layers: tuple[int, ...], draft: str = "layer-skip", link: Link = Link(), exit_candidates: bool = True
) -> LocalEngine:
    model = target_model()
    exits = ExitHeads([ExitSpec(layer) for layer in exit_layers], model.config.hidden_size)
    draft_model = (
        layer_skip_copy(tiny_model("qwen2", seed=0), keep=2) if draft == "layer-skip" else tiny_model("qwen2", seed=7)
    )
    return LocalEngine(TargetRuntime(model, exits), DraftRuntime(draft_model), link, exit_candidates)


@pytest.mark.parametrize("mode", PREDRAFT_MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("gamma", [1, 3, 6])
@pytest.mark.parametrize("exit_layers", [PERFECT, POOR], ids=["perfect-exit", "poor-exit"])
@pytest.mark.parametrize("exit_candidates", [True, False], ids=["candidate-ids", "full-vocab"])
def test_predraft_modes_equal_generate(
    mode: Mode, gamma: int, exit_layers: tuple[int, ...], exit_candidates: bool
) -> None:
    expected = greedy_reference(target_model(), PROMPT, NEW_TOKENS)
    result = engine(exit_layers, exit_candidates=exit_candidates).generate(
        PROMPT, mode, GenerationConfig(early_verdicts=True, max_new_tokens=NEW_TOKENS, gamma=gamma)
    )
    assert result.tokens == expected
    stats = result.stats
    assert stats.hits + stats.misses + stats.no_hint == stats.rounds
    if exit_layers == PERFECT and not exit_candidates:
        # The last layer as an exit (scoring the whole vocabulary: a candidate exit cannot name a
        # correction outside the draft's top-k) is always right: on exits alone every round is a hit, but
        # where the assumed verdict fills the budget (the last round: nothing left to pre-draft).
        # (With the send-time guess on, a guess still drafting its bonus when the verdict comes
        # can be wrong, and whether it is still drafting depends on the machine's timing.)
        alone = engine(exit_layers, exit_candidates=False).generate(
            PROMPT,
            mode,
            GenerationConfig(early_verdicts=True, guess_verdict=False, max_new_tokens=NEW_TOKENS, gamma=gamma),
        )
        assert alone.tokens == expected
        assert alone.stats.misses == 0 and alone.stats.hits >= alone.stats.rounds - (0 if mode is Mode.SD_EE else 1)
    if exit_layers == PERFECT and exit_candidates and gamma > 1:
        # Scoring only the draft's top-k ids, the perfect exit still names corrections early.
        assert stats.hits > 0
    if mode is Mode.SD_EE_PIPELINED:
        # Every shipped branch is verified (its assumption held) or dropped, but those still held
        # when the text ends.
        assert stats.dropped + stats.pipelined <= stats.branches_shipped <= stats.dropped + stats.pipelined + 2


class FixedCostEdge(RealEdge):
    """The real draft, charged a fixed cost per token, so pipelining does not hang on how fast
    this machine runs the tiny models."""

    def draft(self, sequence, gamma, min_tokens=1):  # type: ignore[no-untyped-def]
        block, _ = super().draft(sequence, gamma, min_tokens)
        return block, 0.005 * len(block.tokens)


class FixedCostCloud(RealCloud):
    def run(self, jobs):  # type: ignore[no-untyped-def]
        results, _ = super().run(jobs)
        for result in results:
            if isinstance(result, VerifyResult):  # exits report at a fixed share of the forward
                result.early[:] = [dataclasses.replace(e, elapsed_s=0.1 * e.layer / 4) for e in result.early]
        return results, 0.1


def fixed_cost_run(exit_layers: tuple[int, ...], mode: Mode, config: GenerationConfig) -> GenerationResult:
    model = target_model()
    runtime = TargetRuntime(model, ExitHeads([ExitSpec(layer) for layer in exit_layers], model.config.hidden_size))
    edge = FixedCostEdge(
        DraftRuntime(layer_skip_copy(tiny_model("qwen2", seed=0), keep=2)), config.sampling, config.seed
    )
    spec = ClientSpec(PROMPT, mode, config, edge, Link(one_way_s=0.005))
    # Whole-vocabulary exits: the lens after layer 2 is the draft itself, so a candidate exit would
    # accept every block and never stream (see test_candidate_verdict.py for candidate exits).
    (result,) = VirtualClock(FixedCostCloud(runtime, exit_candidates=False)).run([spec])
    return result


def test_pipelined_blocks_are_verified_on_a_hit_and_dropped_on_a_miss() -> None:
    """An exit at 3/4 of a 100 ms forward leaves 25 ms, enough to draft 3 tokens (2 and the
    bonus guess) at 5 ms each and ship them (5 ms each way): with a perfect exit every round after
    the first is pipelined (from the guess branch or the exit's). The logit lens after layer 2 is
    exactly the 2-layer draft, so it assumes every block accepted, like the guess: right when the
    target agrees, wrong otherwise; the output is the same."""
    config = GenerationConfig(early_verdicts=True, max_new_tokens=NEW_TOKENS, gamma=2)
    expected = greedy_reference(target_model(), PROMPT, NEW_TOKENS)
    perfect = fixed_cost_run(PERFECT, Mode.SD_EE_PIPELINED, config)
    assert perfect.tokens == expected
    assert perfect.stats.pipelined == perfect.stats.rounds - 1 and perfect.stats.misses == 0
    poor = fixed_cost_run(POOR, Mode.SD_EE_PIPELINED, config)
    assert poor.tokens == expected
    for stats in (perfect.stats, poor.stats):
        # Every shipped branch is verified (its assumption held) or dropped unverified, but for
        # those still held when the text ends.
        assert stats.pipelined + stats.dropped <= stats.branches_shipped <= stats.pipelined + stats.dropped + 2
    assert poor.stats.misses > 0 and poor.stats.dropped > 0


def test_poor_exits_give_hits_and_misses() -> None:
    expected = greedy_reference(target_model(), PROMPT, 48)
    predraft = engine(POOR, exit_candidates=False).generate(
        PROMPT, Mode.SD_EE_PREDRAFT, GenerationConfig(early_verdicts=True, max_new_tokens=48, gamma=3)
    )
    pipelined = engine(POOR, exit_candidates=False).generate(
        PROMPT, Mode.SD_EE_PIPELINED, GenerationConfig(early_verdicts=True, max_new_tokens=48, gamma=3)
    )
    for result in (predraft, pipelined):
        assert result.tokens == expected
        assert result.stats.hits > 0 and result.stats.misses > 0


def test_a_useless_draft_stays_lossless_in_every_predraft_mode() -> None:
    expected = greedy_reference(target_model(), PROMPT, NEW_TOKENS)
    for mode in PREDRAFT_MODES:
        result = engine(POOR, draft="random").generate(
            PROMPT, mode, GenerationConfig(early_verdicts=True, max_new_tokens=NEW_TOKENS, gamma=4)
        )
        assert result.tokens == expected


def test_pipelining_hides_the_draft_behind_the_verify() -> None:
    """On the virtual clock (fixed costs: 10 ms to draft a block, 100 ms a forward, 5 ms each
    way), sd pays draft + round trip + verify per round; the pipelined mode with a perfect exit
    has the next block at the server when the verdict is decided, so its rounds cost a forward."""
    config = GenerationConfig(early_verdicts=True, max_new_tokens=NEW_TOKENS, gamma=2)
    sd = fixed_cost_run(PERFECT, Mode.SD, config)
    pipelined = fixed_cost_run(PERFECT, Mode.SD_EE_PIPELINED, config)
    assert pipelined.tokens == sd.tokens
    rounds = sd.stats.rounds
    # Round 0 for both: open 5 ms + prefill 100 ms + opened 5 ms (the first block is drafted
    # meanwhile), then send 5 + verify 100 + final 5. A short last block drafts in 5 ms.
    first = 0.005 + 0.1 + 0.005 + 0.005 + 0.1 + 0.005
    assert sd.stats.total_s == pytest.approx(first + (rounds - 1) * (0.01 + 0.005 + 0.1 + 0.005), abs=0.006)
    assert pipelined.stats.total_s == pytest.approx(first + (rounds - 1) * 0.1, abs=0.006)


def test_seeded_sampling_is_the_same_in_every_speculative_mode() -> None:
    """Position-tied uniforms: a verdict depends only on the draft rows and the position, so the
    pre-draft modes sample the same text as sd for one seed."""
    config = GenerationConfig(
        early_verdicts=True, max_new_tokens=NEW_TOKENS, gamma=3, sampling=SamplingParams(temperature=1.0), seed=11
    )
    texts = {mode: engine(POOR).generate(PROMPT, mode, config).tokens for mode in [Mode.SD, *PREDRAFT_MODES]}
    assert len(set(map(tuple, texts.values()))) == 1, texts


def test_the_guess_alone_needs_no_exits() -> None:
    """Without exits the pre-draft modes run on the send-time guess; without the guess either,
    there is nothing to pre-draft on, and the engine says so."""
    model = target_model()
    engine_ = LocalEngine(TargetRuntime(model), DraftRuntime(layer_skip_copy(tiny_model("qwen2", seed=0), keep=2)))
    expected = greedy_reference(model, PROMPT, NEW_TOKENS)
    for mode in (Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED):
        result = engine_.generate(PROMPT, mode, GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=3))
        assert result.tokens == expected
        assert set(result.stats.hits_by_source) <= {"guess"} and result.stats.branches > 0
    with pytest.raises(ValueError, match="needs exits"):
        engine_.generate(PROMPT, Mode.SD_EE_PREDRAFT, GenerationConfig(max_new_tokens=NEW_TOKENS, guess_verdict=False))


def test_with_the_guess_exits_run_only_when_asked_for() -> None:
    """Exits cost a share of every verify; with the send-time guess the pre-draft modes do not
    ask for them unless told to (sd-ee always does: it measures them)."""
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=3)
    expected = greedy_reference(target_model(), PROMPT, NEW_TOKENS)
    for mode in (Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED):
        quiet = engine(POOR).generate(PROMPT, mode, config)
        asked = engine(POOR).generate(
            PROMPT, mode, GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=3, early_verdicts=True)
        )
        assert quiet.tokens == asked.tokens == expected
        assert quiet.stats.per_exit == {} and asked.stats.per_exit != {}
    assert engine(POOR).generate(PROMPT, Mode.SD_EE, config).stats.per_exit != {}
