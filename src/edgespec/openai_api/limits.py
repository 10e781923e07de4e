"""How much one request may cost edge-serve, checked before any work: body bytes, then prompt
characters, then prompt tokens, each against the verifier's advertised limits.

The order is the cost order. The HTTP body limit refuses a 20 MB body from its Content-Length
without reading it. A prompt whose characters cannot fit the verifier's token limit is refused
before it is tokenized: no token of the vocabulary spans more than ``longest_token_chars``
characters, so a text longer than that times the limit needs more tokens than allowed. Only a
prompt that may fit is tokenized, and only one whose tokens fit takes a slot, drafts, or opens a
cloud session.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from edgespec.openai_api.errors import OpenAIError, bad_request
from edgespec.transport import edgespec_pb2 as pb

logger = logging.getLogger(__name__)

# A token id travels as a uint32 varint: at most 5 bytes on the wire.
WIRE_BYTES_PER_TOKEN = 5
# Room in a message for everything but the prompt's ids (sampling, seed, protocol fields).
WIRE_OVERHEAD_BYTES = 1024
# The largest value the wire's uint32 fields hold: a larger count can never be served.
UINT32_MAX = 2**32 - 1


@dataclass(frozen=True)
class RequestLimits:
    """What edge-serve accepts before it looks at a request's content, and its own cap on prompts."""

    # A body over this is refused with 413; 1 MiB holds any prompt a verifier's default 8192
    # tokens allow, even with every character JSON-escaped.
    max_body_bytes: int = 1024 * 1024
    # A body that has not fully arrived after this long is refused with 408, so a client that
    # trickles its body cannot hold a connection and its buffer forever.
    body_timeout_s: float = 30.0
    # The edge's own cap on prompt tokens, below the verifier's (None: the verifier's alone).
    max_prompt_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {self.max_body_bytes}")
        if self.body_timeout_s <= 0:
            raise ValueError(f"body_timeout_s must be > 0, got {self.body_timeout_s}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1, got {self.max_prompt_tokens}")


@dataclass(frozen=True)
class PromptLimits:
    """The limits a session must fit: the verifier's, tightened by the edge's own cap."""

    max_prompt_tokens: int
    max_new_tokens: int
    context_tokens: int  # prompt + new tokens; 0: no window
    max_message_bytes: int

    @classmethod
    def from_wire(cls, limits: pb.ServerLimits) -> PromptLimits:
        return cls(
            max_prompt_tokens=limits.max_prompt_tokens or FALLBACK_LIMITS.max_prompt_tokens,
            max_new_tokens=limits.max_new_tokens or FALLBACK_LIMITS.max_new_tokens,
            context_tokens=limits.context_tokens,
            max_message_bytes=limits.max_message_bytes or FALLBACK_LIMITS.max_message_bytes,
        )

    def capped(self, max_prompt_tokens: int | None) -> PromptLimits:
        if max_prompt_tokens is None or max_prompt_tokens >= self.max_prompt_tokens:
            return self
        return replace(self, max_prompt_tokens=max_prompt_tokens)

    def within_context(self, context_tokens: int | None) -> PromptLimits:
        """These limits inside a second window (the edge draft's), when there is one."""
        if not context_tokens or (self.context_tokens and self.context_tokens <= context_tokens):
            return self
        return replace(self, context_tokens=context_tokens)

    @property
    def prompt_tokens_on_the_wire(self) -> int:
        """The most prompt tokens one message to the verifier can carry."""
        return max(1, (self.max_message_bytes - WIRE_OVERHEAD_BYTES) // WIRE_BYTES_PER_TOKEN)

    @property
    def prompt_token_limit(self) -> int:
        """The most prompt tokens any request can have (with one new token)."""
        bounds = [self.max_prompt_tokens, self.prompt_tokens_on_the_wire]
        if self.context_tokens:
            bounds.append(self.context_tokens - 1)
        return max(0, min(bounds))


# A verifier that advertises nothing (an older one, a Ray Serve replica) is assumed to have the
# defaults `edgespec serve` starts with; it still refuses what exceeds its real limits.
FALLBACK_LIMITS = PromptLimits(
    max_prompt_tokens=8192, max_new_tokens=4096, context_tokens=0, max_message_bytes=4 * 1024 * 1024
)


def longest_token_chars(tokenizer: Any) -> int:
    """The most characters one token of ``tokenizer`` stands for (at least 1). A vocabulary entry's
    spelling is at least as long as its text: byte-level BPE spells each byte as one character,
    sentencepiece spells a byte fallback as ``<0xNN>``; added tokens are spelled as their text."""
    try:
        vocab = tokenizer.get_vocab()
    except (AttributeError, NotImplementedError, TypeError):
        vocab = {}
    longest = max((len(token) for token in vocab), default=0)
    if not longest:
        logger.warning("the tokenizer has no readable vocabulary: prompts are checked by tokens only")
        return UINT32_MAX
    return longest


def draft_context_tokens(draft: Any, max_gamma: int) -> int | None:
    """The most prompt + new tokens a draft runtime can hold, where it has a hard window: a
    llama.cpp context refuses a longer sequence, and a block drafts up to ``max_gamma`` past the
    committed tokens. A `transformers` draft has no hard window (None)."""
    n_ctx = getattr(draft, "n_ctx", None)
    if not isinstance(n_ctx, int) or n_ctx <= 0:
        return None
    return max(1, n_ctx - max_gamma - 1)


def prompt_too_long(message: str, param: str) -> OpenAIError:
    # OpenAI's own code for a prompt over the model's context.
    return bad_request(message, param, "context_length_exceeded")


def check_prompt_chars(chars: int, limits: PromptLimits, longest_token: int, param: str) -> None:
    """Refuse, before tokenizing, a text that needs more tokens than the limit whatever its content."""
    limit = limits.prompt_token_limit
    if chars > limit * longest_token:
        raise prompt_too_long(
            f"the prompt has {chars} characters: more than {limit} tokens whatever its text, "
            f"and the verifier accepts at most {limit} prompt tokens",
            param,
        )


def check_max_tokens(max_tokens: int | None, limits: PromptLimits, param: str) -> None:
    if max_tokens is not None and max_tokens > limits.max_new_tokens:
        raise bad_request(
            f"{param} is {max_tokens}, and the verifier generates at most {limits.max_new_tokens} tokens per request",
            param,
            "invalid_value",
        )


def check_prompt_tokens(prompt_tokens: int, max_tokens: int, limits: PromptLimits, param: str) -> None:
    """Refuse a tokenized prompt that the verifier would refuse, before any session opens."""
    if prompt_tokens > limits.prompt_token_limit:
        raise prompt_too_long(
            f"the prompt has {prompt_tokens} tokens, and the verifier accepts at most {limits.prompt_token_limit}",
            param,
        )
    if limits.context_tokens and prompt_tokens + max_tokens > limits.context_tokens:
        raise prompt_too_long(
            f"the prompt's {prompt_tokens} tokens plus max_tokens {max_tokens} exceed the target's context window "
            f"of {limits.context_tokens} tokens; send a shorter prompt or a smaller max_tokens",
            param,
        )


def default_max_tokens(configured: int, prompt_tokens: int, limits: PromptLimits) -> int:
    """max_tokens for a request that names none: the configured default, within what the
    verifier can still generate after this prompt."""
    room = limits.context_tokens - prompt_tokens if limits.context_tokens else configured
    return max(1, min(configured, limits.max_new_tokens, room))
