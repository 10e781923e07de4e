"""The in-process engine's greedy output equals `transformers` `generate`, token for token, in
every mode, for every draft length, with drafts that always agree, never agree, or sometimes do."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from edgespec.core.config import GenerationConfig, SamplingParams
from edgespec.core.modes import Mode
from edgespec.drivers.local_engine import LocalEngine
from edgespec.exits.heads import ExitHeads, ExitSpec
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from tests.support.tiny_models import VOCAB, greedy_reference, layer_skip_copy, tiny_model

PROMPT = [3, 17, 42, 8, 9, 61]
NEW_TOKENS = 24
FAMILIES = ("llama", "qwen2")
DRAFTS = ("self", "random", "unrelated", "layer-skip")


@lru_cache(maxsize=None)
def target_model(family: str) -> torch.nn.Module:
    return tiny_model(family, seed=0)


@lru_cache(maxsize=None)
def draft_model(family: str, kind: str) -> torch.nn.Module:
    if kind == "self":
        return target_model(family)
    if kind == "random":
        return tiny_model(family, seed=99)
    if kind == "layer-skip":
        # The target's first 3 of 4 layers: a different model that agrees only part of the time.
        return layer_skip_copy(tiny_model(family, seed=0), keep=3)
    # Unrelated: the other family, a different shape, trained on nothing in common.
    other = "qwen2" if family == "llama" else "llama"
    return tiny_model(other, seed=7, layers=2, hidden=32)


@lru_cache(maxsize=None)
def reference(family: str, new_tokens: int = NEW_TOKENS, eos: int | None = None) -> tuple[int, ...]:
    return tuple(greedy_reference(target_model(family), PROMPT, new_tokens, eos))


def engine(family: str, draft: str, exit_layers: tuple[int, ...] = (), exit_candidates: bool = True) -> LocalEngine:
    exits = ExitHeads.logit_lens(exit_layers, target_model(family).config.hidden_size) if exit_layers else None
    return LocalEngine(
        TargetRuntime(target_model(family), exits),
        DraftRuntime(draft_model(family, draft)),
        exit_candidates=exit_candidates,
    )


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("draft", DRAFTS)
@pytest.mark.parametrize("gamma", range(1, 9))
def test_speculative_greedy_equals_generate(family: str, draft: str, gamma: int) -> None:
    result = engine(family, draft).generate(PROMPT, Mode.SD, GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=gamma))
    assert tuple(result.tokens) == reference(family)
    stats = result.stats
    if draft == "self":
        assert stats.accepted == stats.drafted, "the target drafting for itself must be accepted in full"
    if draft == "random":
        assert stats.accepted <= stats.drafted // 4, "a random draft should be rejected almost always"


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_skip_draft_is_sometimes_accepted_and_sometimes_not(family: str) -> None:
    # Full blocks (no confidence stop): the share accepted is the draft's quality alone.
    stats = (
        engine(family, "layer-skip")
        .generate(PROMPT, Mode.SD, GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=4, draft_stop=0.0))
        .stats
    )
    assert 0 < stats.accepted < stats.drafted // 2


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", [Mode.CLOUD_AR, Mode.SD, Mode.SD_EE])
def test_every_lossless_mode_equals_generate(family: str, mode: Mode) -> None:
    result = engine(family, "layer-skip", exit_layers=(1, 2, 3)).generate(
        PROMPT, mode, GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=3)
    )
    assert tuple(result.tokens) == reference(family)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("gamma", [2, 5, 8])
@pytest.mark.parametrize("eos_at", [3, 10])
def test_eos_inside_a_block_stops_like_generate(family: str, gamma: int, eos_at: int) -> None:
    eos = reference(family)[eos_at]
    expected = reference(family, eos=eos)
    assert expected[-1] == eos and len(expected) <= eos_at + 1
    for draft in ("self", "layer-skip"):
        config = GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=gamma, eos_ids=frozenset({eos}))
        result = engine(family, draft).generate(PROMPT, Mode.SD, config)
        assert tuple(result.tokens) == expected
        assert result.stats.finish_reason == "eos"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("max_new_tokens", [1, 5, 11])
@pytest.mark.parametrize("mode", [Mode.CLOUD_AR, Mode.SD])
def test_max_new_tokens_inside_a_block_stops_like_generate(family: str, max_new_tokens: int, mode: Mode) -> None:
    result = engine(family, "self").generate(PROMPT, mode, GenerationConfig(max_new_tokens=max_new_tokens, gamma=4))
    assert tuple(result.tokens) == reference(family, new_tokens=max_new_tokens)
    assert result.stats.finish_reason == "length"


def exit_agreement(layer: int, tokens: list[int]) -> list[bool]:
    """Teacher-forced over PROMPT + tokens, by `transformers`' own hidden states (not the
    runtime's hooks): does the logit lens after ``layer`` pick tokens[i] where the target does?"""
    model = target_model("qwen2")
    with torch.inference_mode():
        hidden = model(torch.tensor([PROMPT + tokens]), output_hidden_states=True).hidden_states[layer]
        picks = model.lm_head(model.model.norm(hidden))[0, len(PROMPT) - 1 : -1].argmax(-1)
    return [int(p) == t for p, t in zip(picks, tokens)]


def test_logit_lens_exits_count_the_hits_and_misses_teacher_forcing_predicts() -> None:
    """With the target drafting for itself every round accepts its whole block, so an exit's
    early verdict equals the final one exactly when the exit agrees with the target at all γ + 1
    positions the round decides. Count those rounds independently and compare. (γ = 1: the
    logit lens agrees with the target on about half the positions, so rounds of two positions
    give both hits and misses.)"""
    gamma = 1
    # Whole-vocabulary exits: their verdicts are the final rule on the exit's logits, bonus included.
    stats = (
        engine("qwen2", "self", exit_layers=(2, 3), exit_candidates=False)
        .generate(PROMPT, Mode.SD_EE, GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=gamma))
        .stats
    )
    tokens = list(reference("qwen2", new_tokens=NEW_TOKENS + gamma))
    spans = [range(start, start + gamma + 1) for start in range(0, NEW_TOKENS, gamma + 1)]
    assert stats.rounds == len(spans) and stats.accepted == stats.drafted
    right = {layer: sum(all(exit_agreement(layer, tokens)[i] for i in span) for span in spans) for layer in (2, 3)}
    # Threshold 0: both exits stream every round; the hint acted on is the deeper one's.
    assert stats.no_hint == 0
    assert stats.hits == right[3] and stats.misses == stats.rounds - right[3]
    assert 0 < stats.hits < stats.rounds, "this setting must produce both hits and misses"
    for layer in (2, 3):
        assert stats.per_exit[str(layer)] == {
            "rounds": stats.rounds,
            "streamed": stats.rounds,
            "correct": right[layer],
            "streamed_correct": right[layer],
        }
    assert any(event.what.startswith("exit@") for event in stats.timeline)


def test_an_exit_that_never_clears_its_threshold_gives_no_hint() -> None:
    exits = ExitHeads([ExitSpec(3, threshold=1.01)], target_model("qwen2").config.hidden_size)
    engine_ = LocalEngine(TargetRuntime(target_model("qwen2"), exits), DraftRuntime(draft_model("qwen2", "layer-skip")))
    stats = engine_.generate(PROMPT, Mode.SD_EE, GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=4)).stats
    assert stats.no_hint == stats.rounds > 0 and stats.hits == stats.misses == 0
    assert stats.per_exit["3"]["streamed"] == 0


def test_a_prompt_past_the_context_window_is_refused_with_a_clear_error() -> None:
    window = target_model("llama").config.max_position_embeddings
    with pytest.raises(ValueError, match=f"context window of {window}"):
        engine("llama", "self").generate([1] * (window - 4), Mode.SD, GenerationConfig(max_new_tokens=5))


def test_the_unrelated_draft_shares_only_the_vocabulary() -> None:
    """The "unrelated" draft must really be unrelated (else the oracle tests above would not
    exercise rejections) while speaking the target's vocabulary (else its tokens mean nothing)."""
    draft, target = draft_model("llama", "unrelated"), target_model("llama")
    assert draft.get_output_embeddings().weight.shape[0] == target.get_output_embeddings().weight.shape[0]
    assert type(draft) is not type(target) and draft.config.hidden_size != target.config.hidden_size
    own = greedy_reference(draft, PROMPT, NEW_TOKENS)
    assert sum(a == b for a, b in zip(own, reference("llama"))) < NEW_TOKENS // 2


def test_a_draft_with_another_vocabulary_is_refused_with_a_clear_error() -> None:
    small = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=VOCAB - 32,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).eval()
    with pytest.raises(ValueError, match="vocabular"):
        LocalEngine(TargetRuntime(target_model("llama")), DraftRuntime(small)).generate(
            PROMPT, Mode.SD, GenerationConfig(max_new_tokens=8)
        )


@pytest.mark.parametrize("mode", [Mode.CLOUD_AR, Mode.SD, Mode.SD_EE])
def test_sampling_is_reproducible_from_the_seed(mode: Mode) -> None:
    def run(seed: int) -> list[int]:
        config = GenerationConfig(
            max_new_tokens=16, gamma=3, sampling=SamplingParams(temperature=1.0, top_k=40), seed=seed
        )
        return engine("llama", "layer-skip", exit_layers=(2,)).generate(PROMPT, mode, config).tokens

    assert run(11) == run(11)
    assert run(11) != run(12)
