"""One generation session on the server: its committed sequence, its own KV cache, its seeded
verification randomness, and the jobs that run its forwards on the pass thread.

The order of rounds (which block is verified next, which pipelined block is dropped) is the round
core's (``core/verifier.py``); this holds what the forwards need: the cache, the sampling, the seed.
"""

from __future__ import annotations

import logging
import secrets
from typing import Callable

import torch

from edgespec.core.config import SamplingParams
from edgespec.core.logprobs import TokenLogprob
from edgespec.core.verdict import Verdict
from edgespec.core.verifier import Decoded, VerifierRounds, Verify
from edgespec.decoding.block_scoring import begin_round
from edgespec.decoding.early import EarlyVerdict, EarlyVerdictJudge
from edgespec.decoding.grammar import GrammarMatcher, apply_mask
from edgespec.decoding.logprobs import token_logprobs
from edgespec.decoding.verification import RoundUniforms
from edgespec.engines.paged_pool import PoolExhausted
from edgespec.models.target import ScoreRequest, TargetRuntime
from edgespec.sampling import token_from_forward
from edgespec.server.admission import check_generation_fits
from edgespec.server.jobs import Job
from edgespec.server.limits import SessionLimits
from edgespec.server.prefix_cache import PrefixCache
from edgespec.server.refusals import Refused

logger = logging.getLogger(__name__)


class ServerSession:
    """A session's state beside its round core: the cache the forwards fill, the sampling and seed
    they verify with, and the jobs that run them on the pass thread."""

    def __init__(
        self,
        runtime: TargetRuntime,
        prompt_ids: list[int],
        committed_ids: list[int],
        sampling: SamplingParams,
        seed: int,
        max_new_tokens: int,
        eos_ids: frozenset[int],
        limits: SessionLimits,
        prefix_cache: PrefixCache | None = None,
        early_verdicts: bool = False,
        top_logprobs: int | None = None,
        grammar: GrammarMatcher | None = None,
    ) -> None:
        check_generation_fits(runtime, prompt_ids, committed_ids, max_new_tokens, limits)
        self.id = secrets.token_urlsafe(18)
        self.runtime = runtime
        self.prefix_cache = prefix_cache
        # With a prefix store, the cache starts with the longest stored prefix of what the prefill
        # scores (everything but the last token), so the prefill feeds only the rest. An empty store
        # is falsy (it has a length): it is not asked.
        if prefix_cache:
            self.kv, self.reused_prefix = prefix_cache.acquire([*prompt_ids, *committed_ids][:-1])
        else:
            try:
                self.kv, self.reused_prefix = runtime.new_cache(), 0
            except PoolExhausted as error:  # an engine's KV pool has no room for one more session
                raise Refused("BUSY", str(error)) from None
        runtime.live_caches.add(self.kv)
        self.sampling = sampling
        self.seed = seed  # verification uniforms are keyed by (seed, position): see RoundUniforms.at
        self.limits = limits
        # None: no log-probabilities asked for; else each emitted token's, with this many alternatives.
        self.top_logprobs = top_logprobs
        # The grammar the target's output follows: each position's logits are masked by it.
        self.grammar = grammar
        self.rounds = VerifierRounds(
            list(prompt_ids) + list(committed_ids),
            len(prompt_ids),
            eos_ids,
            max_new_tokens,
            early_verdicts=early_verdicts,
        )

    @property
    def sequence(self) -> list[int]:
        return self.rounds.sequence

    @property
    def finished(self) -> bool:
        return self.rounds.finished

    @property
    def produced(self) -> int:
        return self.rounds.produced

    def keep_prefix(self) -> bool:
        """Offer the cache to the prefix store once the generation has finished (no forward is
        in flight then, and it holds the whole conversation so far: a chat's next turn extends
        it). Whether it was stored."""
        if self.prefix_cache is None or not self.finished:
            return False
        return self.prefix_cache.offer(self.kv)

    def prefill_job(self) -> Job[None] | None:
        """Fill the KV cache with everything but the last committed token (None: nothing to fill).
        The scheduler feeds it in chunks that ride with other sessions' rounds (or alone, whole,
        with ``prefill_chunk = 0``); whatever the cache already holds (a reused prefix) is kept."""
        if len(self.sequence) < 2:
            return None
        return Job(ScoreRequest(self.sequence[:-1], 1, self.kv), finish=lambda logits: None, prefill=True)

    def verify_job(
        self, verify: Verify, on_early: Callable[[EarlyVerdict], None] | None
    ) -> Job[tuple[Verdict, EarlyVerdictJudge | None, list[TokenLogprob]]]:
        """The forward the round core asked for; its result is the verdict (for ``rounds.verified``),
        the exits' judge, and the target's log-probabilities of the accepted + 1 tokens the verdict
        emits (empty unless asked for)."""
        block = verify.block
        pending = begin_round(
            self.runtime,
            verify.sequence,
            block.tokens,
            self.sampling,
            block.payload,
            self.seed,
            with_exits=on_early is not None,
            on_streamed=on_early,
            kv=self.kv,
            candidates=block.candidates,
            full_logits=self.top_logprobs is not None or self.grammar is not None,
        )

        def finish(scored: torch.Tensor) -> tuple[Verdict, EarlyVerdictJudge | None, list[TokenLogprob]]:
            grammar = self.grammar
            masked = scored if grammar is None else apply_mask(scored, grammar.block_masks(block.tokens))
            verdict, judge = pending.finish(masked)
            if grammar is not None:
                grammar.settle(block.tokens, verdict.accepted, verdict.next_token)
            return verdict, judge, self._logprobs(scored, [*block.tokens[: verdict.accepted], verdict.next_token])

        return Job(pending.request, finish)

    def _logprobs(self, logits: torch.Tensor, emitted: list[int]) -> list[TokenLogprob]:
        """``logits`` [>= len(emitted), vocab]: the rows the emitted tokens were decided at."""
        return [] if self.top_logprobs is None else token_logprobs(logits, emitted, self.top_logprobs)

    def decode_job(self) -> Job[tuple[int, bool, list[TokenLogprob]]]:
        """One autoregressive token (cloud-ar): (token, finished, its log-probabilities if asked)."""
        rounds = self.rounds
        uniform = None if self.sampling.greedy else RoundUniforms.for_decode(self.seed, len(rounds.sequence))
        argmax_only = self.sampling.greedy and self.top_logprobs is None and self.grammar is None

        def finish(scored: torch.Tensor) -> tuple[int, bool, list[TokenLogprob]]:
            row = scored[0] if self.grammar is None else apply_mask(scored[0], self.grammar.mask())
            token = token_from_forward(row, self.sampling, uniform)
            if self.grammar is not None:
                self.grammar.advance([token])
            commit = rounds.decoded(Decoded(token=token))
            self.runtime.rollback(rounds.sequence, kv=self.kv)
            return token, commit.finished, [] if argmax_only else self._logprobs(scored, [token])

        return Job(ScoreRequest(list(rounds.sequence), 1, self.kv, argmax_only=argmax_only), finish)
