"""The in-process engine: every decoding mode through one interface, target and draft in one
process. It is the reference the networked system must match token for token, and the place
where early verdicts are scored as would-be pre-draft hits or misses.

One speculative round, as in the paper:
  1. the draft proposes gamma tokens after the committed sequence;
  2. the target scores committed + block in one forward (exits report mid-forward);
  3. the verdict (accepted, next token) commits accepted + 1 tokens;
  4. both KV caches roll back to the committed sequence.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

from edgespec.decoding.config import DRAFT_SEED_OFFSET, GenerationConfig, GenerationResult
from edgespec.decoding.early import EarlyVerdictJudge
from edgespec.decoding.modes import Mode
from edgespec.decoding.rounds import verify_block
from edgespec.decoding.sampling import choose_token, position_uniform
from edgespec.decoding.stats import Clock, GenerationStats
from edgespec.decoding.stopping import clip_to_stop
from edgespec.decoding.verification import RoundUniforms, Verdict
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime

logger = logging.getLogger(__name__)


class LocalEngine:
    def __init__(self, target: TargetRuntime, draft: DraftRuntime | None = None) -> None:
        self.target = target
        self.draft = draft
        self._on_commit: Callable[[list[int]], None] = lambda tokens: None

    def generate(
        self,
        prompt_ids: Sequence[int],
        mode: Mode,
        config: GenerationConfig,
        on_commit: Callable[[list[int]], None] | None = None,
    ) -> GenerationResult:
        """Generate after ``prompt_ids``; ``on_commit`` receives each round's committed tokens as
        they are decided (streaming)."""
        if not prompt_ids:
            raise ValueError("the prompt must contain at least one token")
        if mode.uses_draft and self.draft is None:
            raise ValueError(f"mode {mode.value} needs a draft model")
        if mode.uses_exits and self.target.exits is None:
            raise ValueError(f"mode {mode.value} needs exits attached to the target")
        self.target.check_fits(len(prompt_ids), config.max_new_tokens)
        self.target.reset()
        if self.draft is not None:
            self.draft.reset()
        stats = GenerationStats(mode=mode.value, prompt_tokens=len(prompt_ids))
        clock = Clock(stats)
        committed = [int(t) for t in prompt_ids]
        self._on_commit = on_commit or (lambda tokens: None)
        if mode is Mode.CLOUD_AR:
            self._autoregressive(committed, config, stats, clock, use_draft=False)
        elif mode is Mode.EDGE_ONLY:
            self._autoregressive(committed, config, stats, clock, use_draft=True)
        else:
            # In one process there is no link to hide work behind: the pre-draft modes run as
            # sd-ee, whose hits and misses are exactly the pre-drafts that would hit or miss.
            self._speculative(committed, config, stats, clock, with_exits=mode.uses_exits)
        stats.total_s = clock.now()
        generated = committed[len(prompt_ids) :]
        stats.new_tokens = len(generated)
        return GenerationResult(tokens=generated, stats=stats)

    def _autoregressive(
        self, committed: list[int], config: GenerationConfig, stats: GenerationStats, clock: Clock, use_draft: bool
    ) -> None:
        actor = "edge" if use_draft else "cloud"
        produced = 0
        while True:
            start = clock.now()
            if use_draft:
                assert self.draft is not None
                logits = self.draft.next_token_logits(committed)
            else:
                logits = self.target.score_tail(committed, 1)[0]
                stats.target_passes += 1
            if config.sampling.greedy:
                uniform = None
            elif use_draft:  # the edge's randomness, as the networked client draws it
                uniform = position_uniform(config.seed + DRAFT_SEED_OFFSET, len(committed))
            else:  # the target's position-tied draw, as the server takes it
                uniform = RoundUniforms.for_decode(config.seed, len(committed))
            token = choose_token(logits, config.sampling, uniform)
            end = clock.now()
            clock.record(actor, "decode", start, end, stats.rounds)
            stats.rounds += 1
            commit = clip_to_stop([token], config.eos_ids, config.max_new_tokens - produced)
            committed.extend(commit.tokens)
            self._on_commit(commit.tokens)
            produced += len(commit.tokens)
            if produced == len(commit.tokens):
                stats.ttft_s = end
            if commit.finished:
                stats.finish_reason = commit.reason
                return

    def _speculative(
        self, committed: list[int], config: GenerationConfig, stats: GenerationStats, clock: Clock, with_exits: bool
    ) -> None:
        assert self.draft is not None
        params = config.sampling
        policy = config.gamma_policy()
        produced = 0
        while True:
            round_index = stats.rounds
            # Never draft past the token budget: those tokens could not be committed anyway.
            gamma = min(policy.next_gamma() if policy else config.gamma, config.max_new_tokens - produced)
            stats.count_gamma(gamma)
            start = clock.now()
            block = self.draft.draft(committed, gamma, params, seed=config.seed + DRAFT_SEED_OFFSET)
            drafted_at = clock.now()
            clock.record("edge", "draft", start, drafted_at, round_index)
            stats.draft_s += drafted_at - start

            verdict, judge = verify_block(self.target, committed, block.tokens, params, block.probs, config.seed, with_exits)
            verified_at = clock.now()
            stats.verify_s += verified_at - drafted_at
            stats.target_passes += 1
            clock.record("cloud", "verify", drafted_at, verified_at, round_index)
            if judge is not None:
                self._score_early_verdicts(judge, verdict, stats, clock, drafted_at, round_index)

            commit = clip_to_stop(verdict.committed(block.tokens), config.eos_ids, config.max_new_tokens - produced)
            committed.extend(commit.tokens)
            self._on_commit(commit.tokens)
            produced += len(commit.tokens)
            stats.rounds += 1
            stats.drafted += gamma
            stats.accepted += verdict.accepted
            if policy is not None:
                policy.observe(gamma, verdict.accepted, drafted_at - start, verified_at - drafted_at, verified_at - start)
            if round_index == 0:
                stats.ttft_s = verified_at
            self.target.rollback(committed)
            self.draft.rollback(committed)
            logger.debug("round %d: accepted %d/%d next %d", round_index, verdict.accepted, gamma, verdict.next_token)
            if commit.finished:
                stats.finish_reason = commit.reason
                return

    @staticmethod
    def _score_early_verdicts(
        judge: EarlyVerdictJudge, final: Verdict, stats: GenerationStats, clock: Clock, verify_start: float, round_index: int
    ) -> None:
        for early in judge.verdicts:
            stats.count_exit(early.layer, early.streamed, early.verdict == final)
            at = verify_start + early.elapsed_s
            clock.record("cloud", f"exit@{early.layer}" + ("" if early.streamed else " (held)"), at, at, round_index)
        hint = judge.hint
        if hint is None:
            stats.no_hint += 1
        elif hint.verdict == final:
            stats.hits += 1
        else:
            stats.misses += 1
