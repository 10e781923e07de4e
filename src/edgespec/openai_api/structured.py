"""A request's ``response_format`` as the grammar its generation runs under, checked at the edge
against the edge's tokenizer before it takes a slot: a schema the grammar engine refuses is a 400
naming ``response_format``, never a failed session."""

from __future__ import annotations

import asyncio

from edgespec.core.grammar import Grammar
from edgespec.core.modes import Mode
from edgespec.decoding.grammar import GrammarError, check_grammar, tokenizer_fingerprint
from edgespec.openai_api.backend import EdgeBackend
from edgespec.openai_api.errors import bad_request
from edgespec.openai_api.response_format import ResponseFormat


async def request_grammar(response_format: ResponseFormat | None, backend: EdgeBackend) -> Grammar | None:
    spec = response_format.grammar_spec() if response_format is not None else None
    if spec is None:
        return None
    if backend.settings.mode is Mode.EDGE_ONLY:
        message = "response_format: a grammar constrains the target, and edge-only mode has none"
        raise bad_request(message, "response_format")
    tokenizer = backend.tokenizer
    kind, source = spec
    try:
        # Off the event loop: the first grammar compiles the tokenizer too (a second for a big vocabulary).
        grammar = Grammar(kind, source, await asyncio.to_thread(tokenizer_fingerprint, tokenizer))
        await asyncio.to_thread(check_grammar, grammar, tokenizer, sorted(backend.eos_ids))
    except GrammarError as error:
        raise bad_request(f"response_format: {error}", "response_format", "invalid_value") from None
    return grammar
