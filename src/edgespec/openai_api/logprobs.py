"""Log-probabilities as OpenAI spells them: chat's ``logprobs.content`` entries and the legacy
completions' parallel lists, built from the target's ``TokenLogprob`` s.

A token's string is its own bytes: a byte-level BPE token may hold part of a UTF-8 character,
which decoding it alone would turn into U+FFFD, so ``bytes`` carries the exact bytes (as OpenAI's
does) and ``token`` their lenient decoding."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

from pydantic import BaseModel

from edgespec.core.logprobs import TokenLogprob


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]
    refusal: None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class TokenStrings:
    """Each id's bytes and text under one tokenizer (cached: a vocabulary is read token by token)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        # Only a byte-level vocabulary spells bytes as characters; others' pieces are text.
        self._byte_decoder = _byte_level_decoder() if _is_byte_level(tokenizer) else {}
        self.bytes_of = lru_cache(maxsize=65536)(self._bytes_of)

    def _bytes_of(self, token: int) -> bytes:
        piece = self.tokenizer.convert_ids_to_tokens(int(token))
        if isinstance(piece, str) and piece and all(char in self._byte_decoder for char in piece):
            return bytes(self._byte_decoder[char] for char in piece)
        return self.tokenizer.decode([int(token)]).encode("utf-8")

    def text_of(self, token: int) -> str:
        return self.bytes_of(token).decode("utf-8", errors="replace")


def chat_logprobs(entries: Sequence[TokenLogprob], strings: TokenStrings) -> ChatLogprobs:
    def top(token: int, logprob: float) -> TopLogprob:
        return TopLogprob(token=strings.text_of(token), logprob=logprob, bytes=list(strings.bytes_of(token)))

    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=strings.text_of(entry.token),
                logprob=entry.logprob,
                bytes=list(strings.bytes_of(entry.token)),
                top_logprobs=[top(token, logprob) for token, logprob in entry.top],
            )
            for entry in entries
        ]
    )


def completion_logprobs(entries: Sequence[TokenLogprob], strings: TokenStrings, offset: int = 0) -> CompletionLogprobs:
    """``offset``: the characters of completion text before these tokens (a stream's earlier chunks)."""
    tokens = [strings.text_of(entry.token) for entry in entries]
    offsets = []
    for text in tokens:
        offsets.append(offset)
        offset += len(text)
    return CompletionLogprobs(
        tokens=tokens,
        token_logprobs=[entry.logprob for entry in entries],
        top_logprobs=[{strings.text_of(token): logprob for token, logprob in entry.top} for entry in entries],
        text_offset=offsets,
    )


def _is_byte_level(tokenizer: Any) -> bool:
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    return decoder is not None and "ByteLevel" in repr(decoder)


def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet reversed: the character a byte-level BPE vocabulary writes for
    each byte, back to the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(char): byte for byte, char in zip(printable, chars)}
