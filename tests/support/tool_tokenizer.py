"""A tiny real tokenizer (96 ids, like tiny_models.VOCAB) whose chat template knows tools: the JSON
tokenizer's characters, ``<tool_call>`` and ``</tool_call>`` as single added tokens (as in
Qwen2.5's tokenizer) and a copy of Qwen2.5's chat template, which renders ``tools``, assistant
``tool_calls`` and ``tool`` messages (its fixed instructions shortened, so prompts fit a tiny model's
context; its logic unchanged). For the tool-calling tests."""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import AddedToken
from transformers import PreTrainedTokenizerFast

from tests.support.chat_tokenizer import EOS, UNK, bpe_tokenizer
from tests.support.json_tokenizer import MERGES, PUNCTUATION
from tests.support.tiny_models import VOCAB

TOOL_TAGS = ["<tool_call>", "</tool_call>"]
QWEN_TEMPLATE = Path(__file__).with_name("qwen2_5_chat_template.jinja")


def tool_tokenizer() -> PreTrainedTokenizerFast:
    symbols = [EOS, UNK] + list(string.ascii_lowercase + string.digits) + PUNCTUATION + TOOL_TAGS
    tokenizer = bpe_tokenizer(symbols, MERGES[: VOCAB - len(symbols)])
    # Added (not special) tokens, as Qwen2.5 has them: matched whole before BPE, kept when decoding.
    tokenizer.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in TOOL_TAGS])
    tokenizer.chat_template = QWEN_TEMPLATE.read_text()
    assert len(tokenizer) == VOCAB, len(tokenizer)
    return tokenizer
