"""Token ids to text, incrementally, with the same result as decoding them all at once.

Decoding a token alone is wrong for two reasons: a byte-level token can end inside a UTF-8
character (decoding gives U+FFFD until the rest arrives), and sentencepiece tokenizers drop a
word's leading space at the start of a decode. So each step decodes a short window that starts
a few tokens back and emits only what it adds to the window's earlier text (the scheme of
Hugging Face's text-generation-inference), holding text back while it ends in U+FFFD.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self._prefix_offset = 0  # the window starts here: context for the next token's text
        self._read_offset = 0  # text of tokens before this has been emitted

    def _decode(self, tokens: list[int]) -> str:
        # What `edgespec generate` prints: special tokens (EOS) leave no text.
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def push(self, token: int) -> str:
        """Add one token; the text it completes (may be empty while a character is incomplete)."""
        self.tokens.append(int(token))
        return self._advance(final=False)

    def flush(self) -> str:
        """The text still held back at the end (an incomplete character decodes as U+FFFD,
        as a one-shot decode of the whole sequence would give it)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        prefix_text = self._decode(self.tokens[self._prefix_offset : self._read_offset])
        new_text = self._decode(self.tokens[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and (final or not new_text.endswith(REPLACEMENT_CHAR)):
            delta = new_text[len(prefix_text) :]
            self._prefix_offset, self._read_offset = self._read_offset, len(self.tokens)
            return delta
        return ""
