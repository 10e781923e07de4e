"""Token masks from a grammar, through llguidance: what the verifier applies to the target's
logits so its output follows a JSON schema, a regex or a Lark grammar.

Lossless under a grammar means equal to the target's own decoding with the same mask as a logits
processor. A verify forward scores gamma + 1 positions at once, so the matcher is advanced through
the block to get each position's mask (position i's depends on the draft tokens before it), and
after the verdict it is rolled back to the accepted prefix and advanced by the next token. A
draft token the grammar forbids is rejected like any other: the masked target gives it zero mass.

Tokenizers are compiled once (llguidance's tokenizer build is the expensive step) and cached."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch

from edgespec.core.grammar import Grammar

logger = logging.getLogger(__name__)

# Keyed by the tokenizer object itself (weakly): an id() could be reused by another tokenizer.
_TOKENIZERS: weakref.WeakKeyDictionary[Any, dict[tuple[int, ...], Any]] = weakref.WeakKeyDictionary()
_FINGERPRINTS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


class GrammarError(ValueError):
    """A grammar that does not compile (a bad schema, an unsupported construct), or a tokenizer
    the grammar engine cannot read."""


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of the tokenizer's vocabulary (every token and its id): equal on edge and cloud
    exactly when a grammar masks the same ids on both."""
    with _LOCK:
        if tokenizer not in _FINGERPRINTS:
            vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
            _FINGERPRINTS[tokenizer] = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:32]
        return _FINGERPRINTS[tokenizer]


def grammar_tokenizer(tokenizer: Any, eos_ids: Sequence[int] = ()) -> Any:
    """llguidance's view of ``tokenizer`` (cached): through its Rust tokenizer when llguidance
    reads the decoder, else token by token from the tokenizer's own pieces."""
    import llguidance
    import llguidance.hf

    eos = tuple(sorted(eos_ids)) or ((tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None else ())
    with _LOCK:
        compiled_for = _TOKENIZERS.setdefault(tokenizer, {})
        if eos not in compiled_for:
            try:
                compiled = llguidance.hf.from_tokenizer(tokenizer, eos_token=list(eos) or None)
            except ValueError as error:  # a decoder llguidance does not know: give it the pieces
                logger.debug("llguidance reads the tokenizer piece by piece: %s", error)
                compiled = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Pieces(tokenizer, eos)))
            compiled_for[eos] = compiled
        return compiled_for[eos]


class _Pieces:
    """A tokenizer as ``llguidance.TokenizerWrapper`` reads it: each id's bytes, EOS, specials."""

    def __init__(self, tokenizer: Any, eos: tuple[int, ...]) -> None:
        self._tokenizer = tokenizer
        self.eos_token_id = eos[0] if eos else tokenizer.eos_token_id
        self.bos_token_id = None
        # Every added token counts as special, as llguidance reads a Rust tokenizer: a grammar can then
        # name one (``<tool_call>``) as the single token it is.
        self.special_token_ids = sorted({*tokenizer.all_special_ids, *tokenizer.get_added_vocab().values()})
        self.tokens = [tokenizer.convert_ids_to_tokens(index).encode("utf-8") for index in range(len(tokenizer))]

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._tokenizer.encode(text, add_special_tokens=False)


def grammar_source(grammar: Grammar) -> str:
    """The grammar in llguidance's own format; GrammarError if it cannot be built."""
    from llguidance import LLMatcher

    try:
        if grammar.kind == "json_schema":
            return LLMatcher.grammar_from_json_schema(json.loads(grammar.source))
        if grammar.kind == "regex":
            return LLMatcher.grammar_from_regex(grammar.source)
        return LLMatcher.grammar_from_lark(grammar.source)
    except (ValueError, TypeError) as error:
        raise GrammarError(f"the {grammar.kind} does not compile: {error}") from None


def check_grammar(grammar: Grammar, tokenizer: Any, eos_ids: Sequence[int] = ()) -> None:
    """Raise GrammarError, saying why, if ``grammar`` cannot constrain ``tokenizer``'s ids."""
    from llguidance import LLMatcher

    problem = LLMatcher.validate_grammar(grammar_source(grammar), grammar_tokenizer(tokenizer, eos_ids))
    if problem:
        raise GrammarError(f"the {grammar.kind} does not compile: {problem}")


class MaskClock:
    """Seconds spent in a side's grammar work (masks, advancing, rolling back), shared by a matcher
    and its copies: what constrained decoding costs that side per round. Nested calls count once."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._depth = 0

    @contextmanager
    def timing(self) -> Iterator[None]:
        self._depth += 1
        start = time.perf_counter()
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self.seconds += time.perf_counter() - start


class GrammarMatcher:
    """One generation's grammar state: the mask for the next position, advanced token by token
    along the committed text; ``block_masks`` and ``settle`` carry it through a verify round.
    ``clock`` accumulates the time its work takes."""

    def __init__(
        self,
        grammar: Grammar,
        tokenizer: Any,
        vocab_size: int,
        eos_ids: Sequence[int] = (),
        clock: MaskClock | None = None,
    ) -> None:
        from llguidance import LLMatcher

        check_grammar(grammar, tokenizer, eos_ids)
        compiled = grammar_tokenizer(tokenizer, eos_ids)
        self.clock = clock if clock is not None else MaskClock()
        self._matcher = LLMatcher(compiled, grammar_source(grammar))
        self.vocab_size = vocab_size  # the model's rows (may exceed the tokenizer's ids: padding)
        self._tentative = 0  # block tokens consumed to compute masks, not yet settled
        # A tentative EOS is never consumed: it ends the text, so nothing after it is masked, and
        # llguidance's rollback does not count the token that stopped it.
        self._eos = frozenset(int(token) for token in (eos_ids or [compiled.eos_token]))

    def advance(self, tokens: Sequence[int]) -> None:
        """Committed tokens (a resumed session's, a decoded one); GrammarError if the grammar forbids one."""
        with self.clock.timing():
            for token in tokens:
                if not self._matcher.consume_token(int(token)):
                    raise GrammarError(f"token {token} breaks the grammar: {self._matcher.get_error()}")

    def rollback(self, count: int) -> None:
        """Forget the last ``count`` tokens taken."""
        with self.clock.timing():
            if count > 0 and not self._matcher.rollback(count):
                raise GrammarError(f"cannot roll the grammar back by {count}: {self._matcher.get_error()}")

    def mask(self) -> torch.Tensor:
        """[vocab] bool: the ids the grammar allows next."""
        with self.clock.timing():
            allowed = torch.zeros(self.vocab_size, dtype=torch.bool)
            bias = torch.frombuffer(bytearray(self._matcher.compute_logit_bias()), dtype=torch.uint8) > 0
            width = min(len(bias), self.vocab_size)
            allowed[:width] = bias[:width]
            return allowed

    @property
    def stopped(self) -> bool:
        """The text is complete (EOS taken): nothing may follow."""
        return bool(self._matcher.is_stopped())

    def forced(self) -> list[int]:
        """The tokens the grammar allows as the only continuation here (keys, punctuation)."""
        with self.clock.timing():
            return [int(token) for token in self._matcher.compute_ff_tokens()]

    def copy(self) -> GrammarMatcher:
        """An independent matcher in the same state (a draft advances its own), on the same clock."""
        twin = object.__new__(GrammarMatcher)
        with self.clock.timing():
            twin._matcher, twin.vocab_size, twin._eos = self._matcher.deep_copy(), self.vocab_size, self._eos
        twin._tentative, twin.clock = 0, self.clock
        return twin

    def block_masks(self, tokens: Sequence[int]) -> torch.Tensor:
        """[gamma + 1, vocab] bool: row i is the mask after the block's first i tokens. Past a
        token the grammar forbids, rows allow everything: that token is rejected, so they are
        never read; past an EOS too: the text ends there, and the round core clips the rest."""
        with self.clock.timing():
            return self._block_masks(tokens)

    def _block_masks(self, tokens: Sequence[int]) -> torch.Tensor:
        rows = torch.ones(len(tokens) + 1, self.vocab_size, dtype=torch.bool)
        for position in range(len(tokens) + 1):
            rows[position] = self.mask()
            if position == len(tokens):
                break
            token = int(tokens[position])
            if not rows[position, token] or token in self._eos:
                break
            if not self._matcher.consume_token(token):
                raise GrammarError(f"the matcher refused an allowed token: {self._matcher.get_error()}")
            self._tentative += 1
        return rows

    def settle(self, tokens: Sequence[int], accepted: int, next_token: int) -> None:
        """After the verdict on ``tokens``: keep the accepted ones, drop the rest, take the next
        token. Past an EOS nothing is taken: the text ended there (the round core clips it)."""
        with self.clock.timing():
            self._settle(tokens, accepted, next_token)

    def _settle(self, tokens: Sequence[int], accepted: int, next_token: int) -> None:
        if self._tentative > accepted:
            self._matcher.rollback(self._tentative - accepted)
        kept = [int(token) for token in tokens[self._tentative : accepted]]  # an accepted EOS, not yet taken
        self._tentative = 0
        for token in [*kept, int(next_token)]:
            if self.stopped:
                return
            self.advance([token])


def apply_mask(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """The logits with every forbidden id at -inf (a new tensor; ``allowed`` broadcasts)."""
    return logits.float().masked_fill(~allowed, float("-inf"))


class EdgeGrammar:
    """The grammar on the edge, for drafting under the verifier's mask: a matcher kept at the
    committed text, and for each draft a copy advanced to the draft's starting point (a pre-draft
    starts past tokens that are only assumed)."""

    def __init__(
        self, grammar: Grammar, tokenizer: Any, vocab_size: int, prompt_len: int, eos_ids: Sequence[int] = ()
    ) -> None:
        self._committed = GrammarMatcher(grammar, tokenizer, vocab_size, eos_ids)
        self.clock = self._committed.clock
        self._prompt_len = prompt_len
        self._consumed = 0  # generated tokens the committed matcher has taken

    def for_draft(self, committed: Sequence[int], sequence: Sequence[int]) -> GrammarMatcher | None:
        """A matcher after ``sequence`` (which extends ``committed``, both with the prompt); None
        where the text has left the grammar (provisional tokens after an outage): the draft then
        drafts freely and the verifier alone masks."""
        try:
            generated = list(committed[self._prompt_len :])
            self._committed.advance(generated[self._consumed :])
            self._consumed = len(generated)
            draft = self._committed.copy()
            draft.advance(sequence[len(committed) :])
            return draft
        except GrammarError as error:
            logger.debug("drafting without the grammar: %s", error)
            return None


class SequenceGrammar:
    """The grammar on an edge that sees only each draft's starting sequence, not which of it is
    committed (the in-process engine's): one matcher kept along the last sequence, rolled back
    to what the next shares with it and advanced over the rest, so a draft costs the tokens that
    changed, not the whole text."""

    def __init__(
        self, grammar: Grammar, tokenizer: Any, vocab_size: int, prompt_len: int, eos_ids: Sequence[int] = ()
    ) -> None:
        self._matcher = GrammarMatcher(grammar, tokenizer, vocab_size, eos_ids)
        self.clock = self._matcher.clock
        self._prompt_len = prompt_len
        self._taken: list[int] = []  # the generated tokens the matcher has consumed

    def for_draft(self, sequence: Sequence[int]) -> GrammarMatcher | None:
        """A matcher after ``sequence`` (prompt included); None where it has left the grammar or
        the grammar has ended (the draft then drafts freely; the verifier alone masks)."""
        generated = [int(token) for token in sequence[self._prompt_len :]]
        shared = 0
        for had, has in zip(self._taken, generated):
            if had != has:
                break
            shared += 1
        try:
            self._matcher.rollback(len(self._taken) - shared)
            del self._taken[shared:]
            for token in generated[shared:]:
                if self._matcher.stopped:
                    return None
                self._matcher.advance([token])
                self._taken.append(token)
        except GrammarError as error:
            logger.debug("drafting without the grammar: %s", error)
            return None
        return self._matcher.copy()
