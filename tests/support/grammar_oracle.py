"""The oracle for constrained decoding: `transformers` `generate` with the grammar's token mask as
a logits processor (llguidance, the engine the verifier uses), greedy, fp32."""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel

from edgespec.core.grammar import Grammar
from edgespec.decoding.grammar import GrammarMatcher, apply_mask
from tests.support.tiny_models import greedy_generate


class GrammarLogitsProcessor(LogitsProcessor):
    """Masks each step's scores by the grammar, advancing the matcher by the token chosen last."""

    def __init__(self, grammar: Grammar, tokenizer: Any, vocab_size: int, prompt_len: int, eos_ids: list[int]) -> None:
        self.matcher = GrammarMatcher(grammar, tokenizer, vocab_size, eos_ids)
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] > self.prompt_len:
            self.matcher.advance([int(input_ids[0, -1])])
        return apply_mask(scores[0], self.matcher.mask()).unsqueeze(0)


def masked_generate(
    model: PreTrainedModel, tokenizer: Any, grammar: Grammar, prompt: list[int], max_new_tokens: int, eos: int
) -> list[int]:
    processor = GrammarLogitsProcessor(grammar, tokenizer, model.config.vocab_size, len(prompt), [eos])
    out = greedy_generate(model, prompt, max_new_tokens, eos, logits_processor=LogitsProcessorList([processor]))
    return out[0, len(prompt) :].tolist()
