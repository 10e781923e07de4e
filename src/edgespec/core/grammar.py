"""What a constrained generation asks for, as plain values: the grammar the *target's* output
must follow, and which tokenizer its token ids mean.

The grammar constrains the target, so lossless means equal to the target's own decoding under
the same token mask; the verifier applies the mask (``decoding/grammar.py``)."""

from __future__ import annotations

from dataclasses import dataclass

GRAMMAR_KINDS = ("json_schema", "regex", "lark")


@dataclass(frozen=True)
class Grammar:
    """``kind``: json_schema (``source`` is the schema as JSON text), regex, or lark (an EBNF in
    Lark's syntax, as llguidance reads it). ``vocabulary``: the fingerprint of the tokenizer the
    edge compiled it with; the verifier refuses the session when its own differs, since the
    same grammar over another vocabulary masks other ids."""

    kind: str
    source: str
    vocabulary: str = ""

    def __post_init__(self) -> None:
        if self.kind not in GRAMMAR_KINDS:
            raise ValueError(f"grammar kind must be one of {', '.join(GRAMMAR_KINDS)}, got {self.kind!r}")
