"""From a parsed request to the prompt ids and token budget a generation may start with, or a 400.

Cheapest check first, and nothing that costs memory or a slot before the checks that can refuse
it: max_tokens and the prompt's characters against the verifier's limits, then the prompt is
rendered and tokenized (off the event loop), then its tokens are checked. Only then does the
request wait for a slot, draft, or open a cloud session.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

from edgespec.openai_api.backend import EdgeBackend
from edgespec.openai_api.cloud import CloudRefused, CloudUnavailable
from edgespec.openai_api.errors import OpenAIError, bad_request
from edgespec.openai_api.limits import (
    PromptLimits,
    RequestLimits,
    check_max_tokens,
    check_prompt_chars,
    check_prompt_tokens,
    default_max_tokens,
)
from edgespec.openai_api.schemas import ChatCompletionRequest, CompletionRequest
from edgespec.prompting import render_prompt

logger = logging.getLogger(__name__)

# What a tokenizer or chat template raises on text it cannot handle: the caller's input, a 400.
TOKENIZER_ERRORS = (ValueError, TypeError, UnicodeError, OverflowError)
# One tokenization at a time, as when it ran on the event loop: a Hugging Face tokenizer shared
# by threads can fail with "Already borrowed" while one call changes its settings.
_TOKENIZING = threading.Lock()


@dataclass(frozen=True)
class Admitted:
    prompt_ids: list[int]
    max_tokens: int


def cloud_unavailable(error: CloudUnavailable) -> OpenAIError:
    return OpenAIError(503, str(error), "server_error", None, "cloud_unreachable")


def cloud_refused(error: CloudRefused) -> OpenAIError:
    # Not the caller's fault (the edge's token, an incompatible verifier): the service is unavailable.
    return OpenAIError(503, str(error), "server_error", None, "cloud_refused")


async def prompt_limits(backend: EdgeBackend, limits: RequestLimits) -> PromptLimits:
    try:
        advertised = await backend.prompt_limits()
    except CloudUnavailable as error:
        raise cloud_unavailable(error) from None
    except CloudRefused as error:
        raise cloud_refused(error) from None
    return advertised.capped(limits.max_prompt_tokens)


def _serialized(render: Callable[[], list[int]]) -> list[int]:
    with _TOKENIZING:
        return render()


async def tokenize(render: Callable[[], list[int]], param: str) -> list[int]:
    try:
        return await asyncio.to_thread(_serialized, render)
    except TOKENIZER_ERRORS as error:
        logger.info("refused a prompt the tokenizer cannot take: %s: %s", type(error).__name__, error)
        raise bad_request(f"the prompt cannot be tokenized: {error}", param, "invalid_value") from None


def budget(backend: EdgeBackend, requested: int | None, prompt_tokens: int, limits: PromptLimits, param: str) -> int:
    max_tokens = (
        requested
        if requested is not None
        else default_max_tokens(backend.settings.default_max_tokens, prompt_tokens, limits)
    )
    check_prompt_tokens(prompt_tokens, max_tokens, limits, param)
    return max_tokens


async def admit_chat(backend: EdgeBackend, body: ChatCompletionRequest, limits: RequestLimits) -> Admitted:
    bounds = await prompt_limits(backend, limits)
    check_max_tokens(body.token_limit, bounds, "max_completion_tokens" if body.max_completion_tokens else "max_tokens")
    messages = [message.as_template_message() for message in body.messages]
    # Text the prompt holds for sure (content, calls' arguments): a lower bound on its characters.
    chars = sum(
        len(message.text) + sum(len(call.function.arguments) for call in message.tool_calls or [])
        for message in body.messages
    )
    check_prompt_chars(chars, bounds, backend.longest_token, "messages")
    tools = [tool.as_template_tool() for tool in body.tools or []]
    prompt_ids = await tokenize(lambda: render_prompt(backend.tokenizer, messages, tools=tools), "messages")
    return Admitted(prompt_ids, budget(backend, body.token_limit, len(prompt_ids), bounds, "messages"))


async def admit_completion(backend: EdgeBackend, body: CompletionRequest, limits: RequestLimits) -> Admitted:
    bounds = await prompt_limits(backend, limits)
    check_max_tokens(body.token_limit, bounds, "max_tokens")
    prompt: Any = body.prompt
    if isinstance(prompt, str):
        check_prompt_chars(len(prompt), bounds, backend.longest_token, "prompt")
        prompt_ids = await tokenize(lambda: render_prompt(backend.tokenizer, prompt, raw=True), "prompt")
    else:
        prompt_ids = [int(token) for token in prompt]
        budget(backend, body.token_limit, len(prompt_ids), bounds, "prompt")  # the count first: it is the cheap check
        vocab = len(backend.tokenizer)
        if any(not 0 <= token < vocab for token in prompt_ids):
            raise bad_request(f"token ids must be in [0, {vocab})", "prompt")
    return Admitted(prompt_ids, budget(backend, body.token_limit, len(prompt_ids), bounds, "prompt"))
