"""The in-process engine: every decoding mode through one interface, target and draft in one
process. It is the reference the networked system must match token for token.

Every mode runs its round-core machine (``core/``) in the virtual-clock driver
(``drivers/virtual_clock.py``) with the real models: each draft and each forward is
computed for real and charged its measured wall time on a virtual clock, so edge and cloud work
overlap as they would on two machines. ``sd-ee-predraft`` and ``sd-ee-pipelined`` are real runs
of those modes (pre-drafts, pipelined blocks, hits and misses counted as over the network); the
link is instantaneous unless one is given.

A grammar (``GenerationConfig.grammar``) is applied as over the network: the cloud masks every
verified position and decoded token by it, the edge drafts under it, forced tokens cost no draft
step; the time each side's grammar work takes is in the stats (``edge_mask_s``, ``server_mask_s``).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Sequence

from edgespec.core.config import DRAFT_SEED_OFFSET, GenerationConfig, GenerationResult
from edgespec.core.edge_events import Commit
from edgespec.core.edge_only import EdgeOnlyRounds, EdgeOnlyState, TokenChosen
from edgespec.core.generation import Generation
from edgespec.core.modes import Mode
from edgespec.decoding.grammar import GrammarMatcher, SequenceGrammar
from edgespec.drivers.real_backends import RealCloud, RealEdge
from edgespec.drivers.virtual_clock import ClientSpec, VirtualClock
from edgespec.drivers.virtual_devices import Link
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from edgespec.sampling import choose_token, position_uniform

logger = logging.getLogger(__name__)


class LocalEngine:
    def __init__(
        self,
        target: TargetRuntime,
        draft: DraftRuntime | None = None,
        link: Link = Link(),
        exit_candidates: bool = True,
        tokenizer: Any = None,
    ) -> None:
        self.target = target
        self.draft = draft
        self.link = link
        # The models' tokenizer, to compile grammars with (None: no grammars in process).
        self.tokenizer = tokenizer
        # Exits score only the draft's top-k ids per token in greedy rounds (False: whole vocabulary).
        self.exit_candidates = exit_candidates

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
        if config.logprobs is not None:
            # Ignoring them would return no log-probabilities as if they had been honoured.
            raise ValueError("log-probabilities are served over the network (EdgeClient), not in process")
        if config.grammar is not None and (self.tokenizer is None or mode is Mode.EDGE_ONLY):
            raise ValueError(
                "a grammar constrains the target: edge-only mode has none"
                if mode is Mode.EDGE_ONLY
                else "a grammar needs the engine's tokenizer (LocalEngine(..., tokenizer=...))"
            )
        if (mode.uses_draft or mode.server_drafts) and self.draft is None:
            raise ValueError(
                f"mode {mode.value} needs a draft model" + (" (in process, the server's)" if mode.server_drafts else "")
            )
        if config.needs_exits(mode) and self.target.exits is None:
            raise ValueError(
                f"mode {mode.value} needs exits attached to the target"
                + ("" if mode is Mode.SD_EE else " (or the send-time guess)")
            )
        if self.draft is not None and (mode.uses_draft or mode.server_drafts):
            draft_vocab = int(self.draft.vocab_size)
            if draft_vocab != self.target.vocab_size:
                raise ValueError(
                    f"the draft's vocabulary ({draft_vocab} ids) is not the target's ({self.target.vocab_size}): "
                    "speculative decoding needs one tokenizer for both"
                )
        self.target.check_fits(len(prompt_ids), config.max_new_tokens)
        self.target.reset()
        if self.draft is not None:
            self.draft.reset()
        if mode is Mode.EDGE_ONLY:
            return self._edge_only(prompt_ids, config, on_commit or (lambda tokens: None))
        edge_grammar, cloud_grammar = self._grammars(config, len(prompt_ids))
        edge = (
            RealEdge(
                self.draft,
                config.sampling,
                config.seed,
                config.wants_early_verdicts(mode),
                config.wants_alternatives(mode),
                config.draft_stop_below(),
                grammar=edge_grammar,
            )
            if self.draft is not None and mode.uses_draft
            else None
        )
        spec = ClientSpec(list(prompt_ids), mode, config, edge, self.link, eos_ids=config.eos_ids, on_commit=on_commit)
        # cloud-sd: the same draft model, but the server's: it drafts on the verifier's clock.
        cloud = RealCloud(
            self.target,
            draft=self.draft if mode.server_drafts else None,
            exit_candidates=self.exit_candidates,
            grammar=cloud_grammar,
        )
        (result,) = VirtualClock(cloud).run([spec])
        if cloud_grammar is not None and edge_grammar is not None:
            result.stats.edge_mask_s = edge_grammar.clock.seconds
        if cloud_grammar is not None:
            result.stats.server_mask_s = cloud_grammar.clock.seconds
        return result

    def _grammars(
        self, config: GenerationConfig, prompt_len: int
    ) -> tuple[SequenceGrammar | None, GrammarMatcher | None]:
        """The edge's grammar (its draft drafts under it) and the cloud's (it masks the target), each
        compiled for this generation; (None, None) for free text."""
        if config.grammar is None:
            return None, None
        eos = sorted(config.eos_ids)
        cloud = GrammarMatcher(config.grammar, self.tokenizer, self.target.vocab_size, eos)
        if self.draft is None:
            return None, cloud
        return SequenceGrammar(config.grammar, self.tokenizer, int(self.draft.vocab_size), prompt_len, eos), cloud

    def _edge_only(
        self, prompt_ids: Sequence[int], config: GenerationConfig, on_commit: Callable[[list[int]], None]
    ) -> GenerationResult:
        assert self.draft is not None
        gen = Generation(prompt_ids, Mode.EDGE_ONLY, config)
        rounds = EdgeOnlyRounds(gen)
        started = time.perf_counter()
        while rounds.state is EdgeOnlyState.DECODING:
            start = time.perf_counter() - started
            logits = self.draft.next_token_logits(gen.committed)
            # The edge's randomness, as the networked client draws it.
            uniform = (
                None
                if config.sampling.greedy
                else position_uniform(config.seed + DRAFT_SEED_OFFSET, len(gen.committed))
            )
            token = choose_token(logits, config.sampling, uniform)
            end = time.perf_counter() - started
            for action in rounds.token_chosen(TokenChosen(token=token, start=start, end=end)):
                if isinstance(action, Commit):
                    on_commit(action.tokens)
            gen.stats.total_s = end
        return GenerationResult(tokens=gen.new_tokens, stats=gen.stats)
