"""A tiny real tokenizer (96 ids, like tiny_models.VOCAB) with a chat template, for the API tests.

Characters plus a few two-letter merges (so a token can hold more than one character and a stop
string can end inside a token), an EOS special token that decodes to nothing, and a template that
turns chat messages into "role: content" lines.
"""

from __future__ import annotations

import string

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from tests.support.tiny_models import VOCAB

EOS = "<|end|>"
UNK = "<unk>"
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
]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def chat_tokenizer() -> PreTrainedTokenizerFast:
    symbols = (
        [EOS, UNK]
        + list(string.ascii_lowercase + string.ascii_uppercase + string.digits)
        + [" ", "\n"]
        + list(".,:;!?'-()")
    )
    return bpe_tokenizer(symbols, MERGES)


def bpe_tokenizer(symbols: list[str], merges: list[str]) -> PreTrainedTokenizerFast:
    """A fast BPE tokenizer of exactly ``VOCAB`` ids: ``symbols`` (EOS and UNK first) then the
    two-letter ``merges``, with the chat template; tokens decode by plain concatenation."""
    vocab = {symbol: index for index, symbol in enumerate(symbols + merges)}
    assert len(vocab) == VOCAB, len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[(pair[0], pair[1]) for pair in merges], unk_token=UNK))
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, unk_token=UNK)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
