"""The draft runtime: proposes a block of gamma tokens after a given sequence.

The cache tracks its tokens (see ``TrackedCache``), so drafting after any verdict — or after an
*assumed* verdict when pre-drafting — rolls back exactly to what is still valid and feeds only
the rest.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch
from torch import nn

from edgespec.core.block import DraftBlock
from edgespec.core.config import SamplingParams
from edgespec.models.kv import TrackedCache, forward_with_cache, standard_head_input
from edgespec.sampling import logits_to_probs, position_uniform, restrict_support, sample_with_uniform


class DraftGrammar(Protocol):
    """What drafting under a grammar needs (``decoding.grammar.GrammarMatcher`` is one)."""

    @property
    def stopped(self) -> bool: ...
    def forced(self) -> list[int]: ...
    def mask(self) -> torch.Tensor: ...
    def advance(self, tokens: Sequence[int]) -> None: ...


# A sampled draft token's distribution travels as this many (id, probability) pairs at most.
DRAFT_SUPPORT = 64
# Draft ids per drafted position sent for candidate-id exits: the target's correction is usually
# among the draft's first few alternatives, so a handful of LM-head rows decide most verdicts.
EXIT_CANDIDATES = 8


def top_candidates(logits: torch.Tensor, token: int, count: int = EXIT_CANDIDATES) -> torch.Tensor:
    """``token`` (the drafted one: argmax, whatever order topk gives ties) then the draft's next
    likeliest ids, ``count`` in all (int64)."""
    count = min(count, logits.numel())
    top = torch.topk(logits, count).indices
    others = top[top != token][: count - 1]
    return torch.cat([torch.tensor([token], dtype=torch.long), others.long()])


def token_confidence(logits: torch.Tensor, token: int) -> float:
    """The probability the draft gives ``token``."""
    return float(torch.exp(logits[token] - torch.logsumexp(logits, dim=0)))


def runner_up_id(logits: torch.Tensor, token: int) -> int:
    """The draft's likeliest id other than ``token`` (its argmax)."""
    ids = torch.topk(logits, min(2, logits.numel())).indices.tolist()
    return int(next((i for i in ids if i != token), token))


class DraftRuntime:
    """The `transformers` draft backend. Other backends (llama.cpp) override the three cache
    methods below; the drafting rule itself is shared."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.kv = TrackedCache(model.config)
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        standard_head_input(model)

    def _sync(self, sequence: Sequence[int]) -> list[int]:
        """Roll the cache back to what ``sequence`` supports; the tokens still to feed (>= 1)."""
        return self.kv.sync(sequence, keep_uncached=1)

    def _feed(self, tokens: Sequence[int]) -> torch.Tensor:
        """Feed ``tokens`` on top of the cache; float32 logits [vocab] after the last one."""
        return forward_with_cache(self.model, self.kv, tokens, tail=1)[0]

    def reset(self) -> None:
        self.kv.reset()

    @torch.inference_mode()
    def draft(
        self,
        sequence: Sequence[int],
        gamma: int,
        params: SamplingParams,
        seed: int = 0,
        should_stop: Callable[[], bool] | None = None,
        candidates: bool = False,
        alternatives: bool = False,
        stop_below: float = 0.0,
        min_tokens: int = 1,
        grammar: DraftGrammar | None = None,
    ) -> DraftBlock:
        """Draft up to ``gamma`` tokens after ``sequence``. ``should_stop`` is polled between
        steps so a pre-draft whose premise was just disproved stops early (a shorter block).
        ``candidates`` (greedy): also keep each step's top ids, for the server's candidate-id
        exits (only worth it when the session asked for early verdicts). ``alternatives``
        (greedy): also keep each step's confidence and runner-up (``DraftBlock.runner_up``).
        ``stop_below`` (greedy): end the block after a token the draft gives less probability than
        this (the target is likely to reject it, and what follows it is likelier wasted), once it
        has ``min_tokens``. ``grammar`` (a matcher at the end of ``sequence``, advanced as it
        drafts): draft under the verifier's mask, and append the tokens it forces without a step.
        Candidates and alternatives are not kept then (the exits score the whole vocabulary)."""
        if gamma < 1:
            raise ValueError(f"gamma must be >= 1, got {gamma}")
        pending = self._sync(sequence)
        tokens: list[int] = []
        probs: list[torch.Tensor] = []
        top_ids: list[torch.Tensor] = []
        confidence: list[float] = []
        runner_up: list[int] = []
        while len(tokens) < gamma:
            step = len(tokens)
            if step > 0 and should_stop is not None and should_stop():
                break
            if step >= min_tokens and grammar is not None and grammar.stopped:  # the grammar ended the text
                break
            forced = grammar.forced()[: gamma - step] if grammar is not None else []
            if forced:  # the only continuation: no draft step, and the verifier cannot reject it
                assert grammar is not None
                grammar.advance(forced)
                tokens.extend(forced)
                if not params.greedy:
                    probs.extend(torch.nn.functional.one_hot(torch.tensor(forced), self.vocab_size).float())
                pending = [*pending, *forced]
                continue
            logits = self._feed(pending)
            if grammar is not None:
                logits = logits.masked_fill(~grammar.mask()[: logits.shape[-1]], float("-inf"))
            if params.greedy:
                token = int(torch.argmax(logits))
                if candidates and grammar is None:
                    top_ids.append(top_candidates(logits, token))
                if (alternatives and grammar is None) or stop_below > 0:
                    sure = token_confidence(logits, token)
                    if alternatives and grammar is None:
                        confidence.append(sure)
                        runner_up.append(runner_up_id(logits, token))
                    if sure < stop_below and step + 1 >= min_tokens:
                        tokens.append(token)
                        break
            else:
                distribution = restrict_support(logits_to_probs(logits, params), DRAFT_SUPPORT)
                token = sample_with_uniform(distribution, position_uniform(seed, len(sequence) + step))
                probs.append(distribution)
            if grammar is not None and not grammar.stopped:  # once stopped, only EOS is allowed
                grammar.advance([token])
            tokens.append(token)
            pending = [token]
        # The last drafted token stays unfed: it is only worth feeding if the target accepts it.
        return DraftBlock(
            tokens=tokens,
            probs=torch.stack(probs) if probs else None,
            candidates=torch.stack(top_ids) if top_ids else None,
            confidence=confidence or None,
            runner_up=runner_up or None,
        )

    @torch.inference_mode()
    def next_token_logits(self, sequence: Sequence[int]) -> torch.Tensor:
        """Logits [vocab] after ``sequence`` (for edge-only decoding)."""
        return self._feed(self._sync(sequence))

    def rollback(self, sequence: Sequence[int]) -> None:
        """Drop cache entries that ``sequence`` (the committed tokens) no longer supports."""
        self._sync(sequence)
