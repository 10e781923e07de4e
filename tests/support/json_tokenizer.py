"""A tiny real tokenizer (96 ids, like tiny_models.VOCAB) that can spell JSON: lowercase letters,
digits, JSON's punctuation and a few merges, an EOS special token and the chat template of
``chat_tokenizer``. For the structured-output tests."""

from __future__ import annotations

import string

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from tests.support.chat_tokenizer import CHAT_TEMPLATE
from tests.support.tiny_models import VOCAB

EOS = "<|end|>"
UNK = "<unk>"
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
    vocab = {symbol: index for index, symbol in enumerate(symbols + MERGES[: VOCAB - len(symbols)])}
    assert len(vocab) == VOCAB, len(vocab)
    merges = [(pair[0], pair[1]) for pair in MERGES[: VOCAB - len(symbols)]]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=UNK))
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, unk_token=UNK)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
