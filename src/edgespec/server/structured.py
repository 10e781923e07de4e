"""A session's grammar, opened on the server: checked against the target's tokenizer and compiled
once at session open, so a bad grammar or a mismatched edge is refused before any forward."""

from __future__ import annotations

from typing import Any, Sequence

from edgespec.core.grammar import Grammar
from edgespec.decoding.grammar import GrammarError, GrammarMatcher, tokenizer_fingerprint
from edgespec.transport import edgespec_pb2 as pb
from edgespec.transport.codec import ProtocolError


def open_grammar(
    grammar: Grammar | None, tokenizer: Any, vocab_size: int, eos_ids: Sequence[int], committed_ids: Sequence[int]
) -> GrammarMatcher | None:
    """The session's matcher, advanced past a resumed session's committed tokens (None: no grammar)."""
    if grammar is None:
        return None
    if tokenizer is None:
        raise ProtocolError(pb.BAD_REQUEST, "this server has no tokenizer to compile grammars with")
    ours = tokenizer_fingerprint(tokenizer)
    if grammar.vocabulary != ours:
        raise ProtocolError(
            pb.BAD_REQUEST,
            f"the edge's tokenizer (vocabulary {grammar.vocabulary or 'unnamed'}) is not the target's ({ours}): "
            "a grammar would mask other token ids on each side",
        )
    try:
        matcher = GrammarMatcher(grammar, tokenizer, vocab_size, eos_ids)
        matcher.advance(committed_ids)
    except GrammarError as error:
        raise ProtocolError(pb.BAD_REQUEST, str(error)) from None
    return matcher
