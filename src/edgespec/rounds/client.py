"""The edge side of speculative rounds, sans I/O.

Feed it what happened (a block was drafted, an early or final verdict arrived, a pipelined
block was dropped) and it answers with what to do (draft, cancel a draft, send a block, commit
tokens, finish). It never waits: drafting, sending and time belong to its driver, which passes
the time of each event in, so the same object runs over gRPC, in process and on a simulated clock.

Modes: ``sd`` ignores early verdicts; ``sd-ee`` counts them as would-be pre-draft hits;
``sd-ee-predraft`` drafts the next block on the latest confident early verdict and sends it when
the final verdict confirms it; ``sd-ee-pipelined`` also ships that block before the final verdict,
tagged with the verdict it assumes (the server verifies it straight away if the assumption held).
Only final verdicts commit tokens.
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
class _PreDraft:
    id: int
    assumed: Verdict
    block: DraftBlock | None = None
    draft_s: float = 0.0
    tagged: bool = False  # shipped before the final verdict (pipelined)


@dataclass
class _InFlight:
    block: DraftBlock
    draft_s: float
    sent_at: float


class ClientRounds:
    """One session's rounds. ``gen`` (the committed text and stats) outlives the session."""

    def __init__(self, gen: Generation) -> None:
        self.gen = gen
        self.mode = gen.mode
        self.predraft = gen.mode in (Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED)
        self.pipelined = gen.mode is Mode.SD_EE_PIPELINED
        self.round = 0  # every session numbers its rounds from 0
        self._ids = itertools.count()
        self._waiting_for: int | None = None  # the draft that becomes the current round's block
        self._in_flight: _InFlight | None = None
        self._hint: Verdict | None = None  # the early verdict being acted on
        self._latest: Verdict | None = None  # the last early verdict, acted on or not
        self._pre: _PreDraft | None = None

    # ---------------------------------------------------------------- events

    def start(self) -> list[ClientAction]:
        return [self._draft_current()]

    def drafted(self, draft_id: int, block: DraftBlock, start: float, end: float) -> list[ClientAction]:
        gen = self.gen
        what = "pre-draft" if self._pre is not None and draft_id == self._pre.id else "draft"
        gen.stats.draft_s += end - start
        gen.record("edge", what, start, end, self.round + (what == "pre-draft"))
        if draft_id == self._waiting_for:
            self._waiting_for = None
            return self._send_current(block, end - start, end)
        pre = self._pre
        if pre is not None and draft_id == pre.id:
            pre.block, pre.draft_s = block, end - start
            if self.pipelined and not pre.tagged:
                pre.tagged = True
                return [SendBlock(self.round + 1, block, assumes=(self.round, pre.assumed))]
        return []  # a draft that was cancelled while it ran

    def early(self, round_index: int, layer: int, verdict: Verdict, at: float) -> list[ClientAction]:
        if round_index != self.round or self._in_flight is None:
            return []  # late news of a finished round
        self._latest = verdict
        self.gen.record("link", f"early@{layer}", at, at, round_index)
        if not self.predraft or verdict == self._hint or (self._pre is not None and self._pre.tagged):
            return []
        self._hint = verdict
        actions: list[ClientAction] = self._drop_pre()
        assumed = clip_to_stop(verdict.committed(self._in_flight.block.tokens), self.gen.eos, self.gen.budget())
        if assumed.finished:
            return actions  # the assumed verdict ends the generation: nothing to pre-draft
        pre = _PreDraft(next(self._ids), verdict)
        self._pre = pre
        gamma = self.gen.gamma(len(assumed.tokens))
        actions.append(Draft(pre.id, self.gen.committed + assumed.tokens, gamma, self.round + 1, "pre-draft"))
        return actions

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
        # sd-ee scores the would-be pre-draft: the early verdict it would have acted on.
        scored = self._hint if self.predraft else self._latest
        if scored is None:
            stats.no_hint += int(self.mode.uses_exits)
        elif scored == verdict:
            stats.hits += 1
        else:
            stats.misses += 1
        pre, hit = self._pre, self._pre is not None and self._hint == verdict
        self._in_flight, self._hint, self._latest, self._pre = None, None, None, None
        if step.finished or server_finished:
            gen.finish(step.reason or "length")  # the server may end it (its budget)
            if pre is not None and pre.block is None:
                actions.append(CancelDraft(pre.id))
            return actions + [Finished(gen.stats.finish_reason)]
        self.round += 1
        if hit and pre is not None:
            if pre.block is None:
                self._waiting_for = pre.id  # still drafting: it becomes this round's block
            elif pre.tagged:
                self._in_flight = _InFlight(pre.block, pre.draft_s, at)  # already at the server
            else:
                actions += self._send_current(pre.block, pre.draft_s, at)
            return actions
        if pre is not None and pre.block is None:
            actions.append(CancelDraft(pre.id))
        actions.append(self._draft_current())
        return actions

    def dropped(self, round_index: int) -> list[ClientAction]:
        self.gen.stats.dropped += 1
        return []

    def abandon(self) -> list[ClientAction]:
        """The session ends early (an outage): stop whatever is still drafting."""
        ids = [i for i in (self._waiting_for, self._pre.id if self._pre and self._pre.block is None else None) if i is not None]
        self._waiting_for, self._pre = None, None
        return [CancelDraft(i) for i in ids]

    # ---------------------------------------------------------------- helpers

    def _draft_current(self) -> Draft:
        draft = Draft(next(self._ids), list(self.gen.committed), self.gen.gamma(), self.round, "draft")
        self._waiting_for = draft.id
        return draft

    def _send_current(self, block: DraftBlock, draft_s: float, at: float) -> list[ClientAction]:
        self._in_flight = _InFlight(block, draft_s, at)
        return [SendBlock(self.round, block)]

    def _drop_pre(self) -> list[ClientAction]:
        pre, self._pre = self._pre, None
        return [CancelDraft(pre.id)] if pre is not None and pre.block is None else []
