"""Decoding with the draft alone, one token at a time: the edge-only mode, and provisional tokens
while the server is unreachable (re-verified once it answers)."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Callable

from edgespec.client.round_driver import EdgeRun
from edgespec.core.config import DRAFT_SEED_OFFSET
from edgespec.core.edge_only import EdgeOnlyRounds, EdgeOnlyState, TokenChosen
from edgespec.core.stopping import FinishReason, clip_to_stop
from edgespec.models.draft import DraftRuntime
from edgespec.sampling import choose_token, position_uniform


async def decode_provisional(run: EdgeRun, draft: DraftRuntime, thread: Executor, until: Callable[[], bool]) -> None:
    """The draft alone decides provisional tokens, one at a time, until the provisional text
    ends (EOS, budget) or ``until()``; at least one token, so every fallback makes progress.
    Drafted exactly as a block would be (same uniforms, same distributions), so re-verifying
    them is the round the uninterrupted generation would have run."""
    gen = run.gen
    config, stats = gen.config, gen.stats
    loop = asyncio.get_running_loop()
    seed = config.seed + DRAFT_SEED_OFFSET
    while gen.provisional_end is None:
        budget = gen.budget(len(gen.provisional))
        if budget <= 0:
            gen.provisional_ended(FinishReason.LENGTH)
            return
        sequence = gen.committed + gen.provisional
        start = run.now()
        block = await loop.run_in_executor(thread, lambda: draft.draft(sequence, 1, config.sampling, seed=seed))
        end = run.now()
        stats.draft_s += end - start
        gen.record("edge", "provisional decode", start, end)
        step = clip_to_stop(block.tokens, gen.eos, budget)
        gen.add_provisional(step.tokens, block.probs, end=step.reason)
        if until():
            return


async def decode_edge_only(run: EdgeRun, draft: DraftRuntime, thread: Executor) -> None:
    """The edge-only mode: the draft alone decides, one token at a time, until the text is done."""
    gen = run.gen
    config = gen.config
    rounds = EdgeOnlyRounds(gen)
    loop = asyncio.get_running_loop()
    while rounds.state is EdgeOnlyState.DECODING:
        start = run.now()
        logits = await loop.run_in_executor(thread, draft.next_token_logits, list(gen.committed))
        uniform = (
            None if config.sampling.greedy else position_uniform(config.seed + DRAFT_SEED_OFFSET, len(gen.committed))
        )
        token = choose_token(logits, config.sampling, uniform)
        end = run.now()
        gen.record("edge", "decode", start, end)
        rounds.token_chosen(TokenChosen(token=token, start=start, end=end))
