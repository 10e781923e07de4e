"""The edge side of speculative rounds, sans I/O.

Feed it what happened (a block was drafted, an early or final verdict arrived, a pipelined
block was dropped) and it answers with what to do (draft, cancel a draft, send a block, commit
tokens, finish). It never waits: drafting, sending and time belong to its driver, which passes
the time of each event in, so the same object runs over gRPC, in process and on a simulated clock.

Modes: ``sd`` ignores early verdicts; ``sd-ee`` counts them as would-be pre-draft hits;
``sd-ee-predraft`` pre-drafts the next block on assumed verdicts (*branches*) while the server
verifies, and sends the branch the final verdict confirms at once; ``sd-ee-pipelined`` also ships
each branch as soon as it is drafted, tagged with the verdict it assumes, so the server verifies
the right one the moment the verdict is decided. Branches come from the draft's own guess at send
time (every token accepted, its next token as the bonus: it drafts one token past the block) and
from confident early verdicts. Only final verdicts commit tokens.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from edgespec.decoding.modes import Mode
from edgespec.decoding.stopping import clip_to_stop
from edgespec.decoding.verification import Verdict
from edgespec.models.draft import DraftBlock
from edgespec.rounds.state import Generation


# ---------------------------------------------------------------- actions


@dataclass(frozen=True)
class Draft:
    """Draft ``gamma`` tokens after ``sequence``; report it with ``ClientRounds.drafted(id, ...)``."""

    id: int
    sequence: list[int]
    gamma: int
    round: int  # the round the block is for
    what: str  # "draft" | "pre-draft"


@dataclass(frozen=True)
class CancelDraft:
    """The draft ``id`` is no longer needed: stop it at its next step (it is ignored when reported)."""

    id: int


@dataclass(frozen=True)
class SendBlock:
    round: int
    block: DraftBlock
    assumes: tuple[int, Verdict] | None = None  # (round, verdict) a pipelined block depends on


@dataclass(frozen=True)
class Commit:
    tokens: list[int]


@dataclass(frozen=True)
class Finished:
    reason: str


ClientAction = Draft | CancelDraft | SendBlock | Commit | Finished


class ProtocolViolation(ValueError):
    """The server said something no correct server says (a verdict for another round)."""


@dataclass
class _Branch:
    """A pre-draft of the next block on one assumed verdict of the round in flight."""

    id: int
    assumed: Verdict
    source: str  # "guess" | "exit <layer>"
    block: DraftBlock | None = None
    bonus: int | None = None  # the draft's own next token after the block: its guess
    draft_s: float = 0.0
    tagged: bool = False  # shipped before the final verdict (pipelined)


@dataclass
class _InFlight:
    block: DraftBlock
    draft_s: float
    sent_at: float


def _split(block: DraftBlock, gamma: int) -> tuple[DraftBlock, int | None]:
    """A block drafted one token long: the block proper, and the draft's guess of the bonus."""
    if len(block.tokens) <= gamma:
        return block, None
    probs = None if block.probs is None else block.probs[:gamma]
    return DraftBlock(block.tokens[:gamma], probs), block.tokens[gamma]


class ClientRounds:
    """One session's rounds. ``gen`` (the committed text and stats) outlives the session."""

    def __init__(self, gen: Generation) -> None:
        self.gen = gen
        self.mode = gen.mode
        self.predraft = gen.mode in (Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED)
        self.pipelined = gen.mode is Mode.SD_EE_PIPELINED
        self.guess = self.predraft and gen.config.guess_verdict
        self.max_branches = gen.config.branches
        self.round = 0  # every session numbers its rounds from 0
        self._ids = itertools.count()
        self._waiting_for: tuple[int, int] | None = None  # (draft id, γ) of the next block to send
        self._in_flight: _InFlight | None = None
        self._latest: Verdict | None = None  # the last early verdict of the round in flight
        self._branches: list[_Branch] = []
        self._asked: dict[int, int] = {}  # draft id -> tokens asked for

    # ---------------------------------------------------------------- events

    def start(self) -> list[ClientAction]:
        return [self._draft_current()]

    def drafted(self, draft_id: int, block: DraftBlock, start: float, end: float) -> list[ClientAction]:
        gen = self.gen
        branch = next((b for b in self._branches if b.id == draft_id), None)
        gen.stats.draft_s += end - start
        gen.record("edge", "pre-draft" if branch is not None else "draft", start, end, self.round + (branch is not None))
        if self._waiting_for is not None and draft_id == self._waiting_for[0]:
            block, bonus = _split(block, self._waiting_for[1])
            self._waiting_for = None
            return self._send_current(block, bonus, end - start, end)
        if branch is None or branch.block is not None:
            return []  # a draft that was cancelled while it ran
        branch.block, branch.bonus = _split(block, self._asked[draft_id] - int(self.guess))
        branch.draft_s = end - start
        if self.pipelined:
            branch.tagged = True
            gen.stats.branches_shipped += 1
            return [SendBlock(self.round + 1, branch.block, assumes=(self.round, branch.assumed))]
        return []

    def early(self, round_index: int, layer: int, verdict: Verdict, at: float) -> list[ClientAction]:
        if round_index != self.round or self._in_flight is None:
            return []  # late news of a finished round
        self._latest = verdict
        self.gen.record("link", f"early@{layer}", at, at, round_index)
        if not self.predraft or any(b.assumed == verdict for b in self._branches):
            return []
        return self._branch(verdict, f"exit {layer}")

    def final(
        self, round_index: int, verdict: Verdict, server_finished: bool, pipelined: bool, verify_s: float, at: float
    ) -> list[ClientAction]:
        gen, stats = self.gen, self.gen.stats
        if round_index != self.round or self._in_flight is None:
            raise ProtocolViolation(f"final verdict for round {round_index} while round {self.round} is in flight")
        current = self._in_flight
        block = current.block
        if not 0 <= verdict.accepted <= len(block.tokens):
            raise ProtocolViolation(f"verdict accepts {verdict.accepted} of {len(block.tokens)} tokens")
        stats.wait_s += at - current.sent_at
        stats.server_verify_s += verify_s
        gen.record("cloud", "verify (server)", at - verify_s, at, round_index)
        stats.rounds += 1
        stats.target_passes += 1
        stats.drafted += len(block.tokens)
        stats.accepted += verdict.accepted
        stats.count_gamma(len(block.tokens))
        stats.pipelined += int(pipelined)
        if gen.gamma_policy is not None:
            # A pre-drafted block's draft time was hidden behind the last verify; charging it
            # anyway keeps the model simple and errs towards shorter blocks.
            gen.gamma_policy.observe(len(block.tokens), verdict.accepted, current.draft_s, verify_s, current.draft_s + at - current.sent_at)
        step = clip_to_stop(verdict.committed(block.tokens), gen.eos, gen.budget())
        gen.commit(step.tokens, at)
        actions: list[ClientAction] = [Commit(step.tokens)]
        branches, hit = self._branches, next((b for b in self._branches if b.assumed == verdict), None)
        self._score(verdict, hit)
        self._in_flight, self._latest, self._branches = None, None, []
        actions += [CancelDraft(b.id) for b in branches if b.block is None and b is not hit]
        if step.finished or server_finished:
            gen.finish(step.reason or "length")  # the server may end it (its budget)
            if hit is not None and hit.block is None:
                actions.append(CancelDraft(hit.id))
            return actions + [Finished(gen.stats.finish_reason)]
        self.round += 1
        if hit is None:
            return actions + [self._draft_current()]
        if hit.block is None:
            # Still drafting: it becomes this round's block (its length is what the branch asked).
            self._waiting_for = (hit.id, self._asked[hit.id] - int(self.guess))
            return actions
        if hit.tagged:  # already at the server, verified as we speak
            self._in_flight = _InFlight(hit.block, hit.draft_s, at)
            return actions + self._guess_branch(hit.block, hit.bonus)
        return actions + self._send_current(hit.block, hit.bonus, hit.draft_s, at)

    def dropped(self, round_index: int) -> list[ClientAction]:
        self.gen.stats.dropped += 1
        return []

    def abandon(self) -> list[ClientAction]:
        """The session ends early (an outage): stop whatever is still drafting."""
        ids = [b.id for b in self._branches if b.block is None]
        if self._waiting_for is not None:
            ids.append(self._waiting_for[0])
        self._waiting_for, self._branches = None, []
        return [CancelDraft(i) for i in ids]

    # ---------------------------------------------------------------- helpers

    def _score(self, verdict: Verdict, hit: _Branch | None) -> None:
        stats = self.gen.stats
        if not self.predraft:  # sd-ee scores the would-be pre-draft: the latest early verdict
            if self._latest is None:
                stats.no_hint += int(self.mode.uses_exits)
            elif self._latest == verdict:
                stats.hits += 1
            else:
                stats.misses += 1
            return
        if hit is not None:
            stats.hits += 1
            stats.hits_by_source[hit.source] = stats.hits_by_source.get(hit.source, 0) + 1
        elif self._branches:
            stats.misses += 1
        else:
            stats.no_hint += 1

    def _draft_current(self) -> Draft:
        gamma = self.gen.gamma()
        draft = self._new_draft(self.gen.committed, gamma, self.round, "draft")
        self._waiting_for = (draft.id, gamma)
        return draft

    def _new_draft(self, sequence: list[int], gamma: int, round_index: int, what: str) -> Draft:
        # Guessing drafts one token past the block: the draft's own bonus guess.
        asked = gamma + int(self.guess)
        draft = Draft(next(self._ids), list(sequence), asked, round_index, what)
        self._asked[draft.id] = asked
        return draft

    def _send_current(self, block: DraftBlock, bonus: int | None, draft_s: float, at: float) -> list[ClientAction]:
        self._in_flight = _InFlight(block, draft_s, at)
        return [SendBlock(self.round, block)] + self._guess_branch(block, bonus)

    def _guess_branch(self, block: DraftBlock, bonus: int | None) -> list[ClientAction]:
        """Pre-draft at once on the likeliest verdict: the whole block accepted, the draft's
        next token as the bonus."""
        if not self.guess or bonus is None:
            return []
        return self._branch(Verdict(len(block.tokens), bonus), "guess")

    def _branch(self, verdict: Verdict, source: str) -> list[ClientAction]:
        assert self._in_flight is not None
        actions: list[ClientAction] = []
        if len(self._branches) >= self.max_branches:
            # Make room by replacing a branch not yet shipped: the oldest exit branch first (a
            # later exit is surer), then the guess.
            spare = [b for b in self._branches if not b.tagged]
            if not spare:
                return []
            spare.sort(key=lambda b: (b.source == "guess", b.id))
            evicted = spare[0]
            self._branches.remove(evicted)
            if evicted.block is None:
                actions.append(CancelDraft(evicted.id))
        assumed = clip_to_stop(verdict.committed(self._in_flight.block.tokens), self.gen.eos, self.gen.budget())
        if assumed.finished:
            return actions  # the assumed verdict ends the generation: nothing to pre-draft
        gamma = self.gen.gamma(len(assumed.tokens))
        draft = self._new_draft(self.gen.committed + assumed.tokens, gamma, self.round + 1, "pre-draft")
        self._branches.append(_Branch(draft.id, verdict, source))
        self.gen.stats.branches += 1
        return actions + [draft]
