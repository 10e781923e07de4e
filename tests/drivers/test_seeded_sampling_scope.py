"""What a seed fixes, as the README states it: with the same seed, draft and γ every speculative
mode gives the same text (draws are tied to (seed, position)); a different γ moves the block
boundaries (a bonus token is drawn from the target, an accepted one came from the draft), so it
changes the sample; cloud-ar draws every token from the target, a different sample again."""

from __future__ import annotations

from edgespec.core.config import GenerationConfig, SamplingParams
from edgespec.core.modes import Mode
from edgespec.drivers.local_engine import LocalEngine
from edgespec.exits.heads import ExitHeads
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from tests.support.tiny_models import layer_skip_copy, tiny_model

PROMPT = [3, 17, 42, 8, 9, 61]
SAMPLING = SamplingParams(temperature=0.9, top_k=30)


def test_a_seed_fixes_the_text_per_draft_and_gamma_not_across_them() -> None:
    target = tiny_model("qwen2", seed=0)
    engine = LocalEngine(
        TargetRuntime(target, ExitHeads.logit_lens((2,), 64)),
        DraftRuntime(layer_skip_copy(tiny_model("qwen2", seed=0), keep=3)),
    )
    other_gamma = other_mode = 0
    for seed in range(2):
        config = GenerationConfig(max_new_tokens=24, gamma=3, sampling=SAMPLING, seed=seed)
        sd = engine.generate(PROMPT, Mode.SD, config).tokens
        assert engine.generate(PROMPT, Mode.SD_EE, config).tokens == sd
        other_gamma += (
            engine.generate(
                PROMPT, Mode.SD, GenerationConfig(max_new_tokens=24, gamma=5, sampling=SAMPLING, seed=seed)
            ).tokens
            != sd
        )
        other_mode += engine.generate(PROMPT, Mode.CLOUD_AR, config).tokens != sd
    assert other_gamma > 0 and other_mode > 0
