"""A tiny real tokenizer (96 ids, like tiny_models.VOCAB) that can spell JSON: lowercase letters,
digits, JSON's punctuation and a few merges, an EOS special token and the chat template of
``chat_tokenizer``. For the structured-output tests."""

from __future__ import annotations

import string

from transformers import PreTrainedTokenizerFast

from tests.support.chat_tokenizer import EOS, UNK, bpe_tokenizer
from tests.support.tiny_models import VOCAB

PUNCTUATION = list('{}[]":,. -\n') + ["\\", "_", "+", "'", "?", "!", "(", ")"]
MERGES = [
    "th",
    "he",
    "in",
    "er",
    "an",
    "re",
    "on",
    "at",
    "en",
    "nd",
    "ti",
    "es",
    "or",
    "te",
    "of",
    "ed",
    "is",
    "it",
    "al",
    "ar",
    "st",
    "to",
    "nt",
    "ng",
    "se",
    "ha",
    "as",
    "ou",
    "io",
    "le",
    "ve",
    "co",
    "me",
    "de",
    "hi",
    "ri",
    "ro",
    "ic",
    "ne",
    "ea",
    "ra",
    "ce",
    "li",
    "ch",
    "ll",
    "be",
    "ma",
    "si",
    "om",
    "ur",
]


def json_tokenizer() -> PreTrainedTokenizerFast:
    symbols = [EOS, UNK] + list(string.ascii_lowercase + string.digits) + PUNCTUATION
    return bpe_tokenizer(symbols, MERGES[: VOCAB - len(symbols)])
