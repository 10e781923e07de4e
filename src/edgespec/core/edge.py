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
time (every token accepted, its next token as the bonus: the branch drafts on from the block, its
first token being that guess), from *runner-up* guesses (a rejection where the draft was least
sure, corrected to its runner-up token) in the branches the guess leaves, and from confident
early verdicts; each guess is made only while it pays (``BranchPayoff``: its hit rate in this
session against the draft step a wrong one wastes, and whether the edge can draft it before the
verdict). Only final verdicts commit tokens.

States (``EdgeState``): IDLE until ``started``; DRAFTING while the round's block is not at the
server; IN_FLIGHT while it awaits its verdict; FINISHED once the text is complete. A final
verdict is legal only IN_FLIGHT, for the round in flight; late news (a draft, a hint, a drop)
after the end is taken and ignored; anything else raises ``ProtocolViolation``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from enum import Enum

from edgespec.core.block import DraftBlock
from edgespec.core.branch_payoff import Branch, BranchPayoff, runner_up_verdicts
from edgespec.core.edge_events import (
    BlockDropped,
    BlockSent,
    CancelDraft,
    Commit,
    Draft,
    Drafted,
    DraftKind,
    EarlyVerdictArrived,
    EdgeAction,
    FinalVerdictArrived,
    Finished,
    SendBlock,
)
from edgespec.core.errors import ProtocolViolation
from edgespec.core.generation import Generation
from edgespec.core.modes import Mode
from edgespec.core.stopping import FinishReason, clip_to_stop
from edgespec.core.verdict import Verdict


@dataclass
class _InFlight:
    block: DraftBlock
    draft_s: float
    sent_at: float


class EdgeState(Enum):
    IDLE = "idle"  # nothing asked yet
    DRAFTING = "drafting"  # the current round's block is not at the server yet
    IN_FLIGHT = "in flight"  # the current round's block awaits its final verdict
    FINISHED = "finished"  # the text is complete


# The states each event may move the machine to, from each state it is legal in. An event not
# listed for the current state raises ProtocolViolation and changes nothing.
_TRANSITIONS: dict[tuple[EdgeState, str], frozenset[EdgeState]] = {
    (EdgeState.IDLE, "started"): frozenset({EdgeState.DRAFTING}),
    (EdgeState.DRAFTING, "drafted"): frozenset({EdgeState.DRAFTING, EdgeState.IN_FLIGHT}),
    (EdgeState.DRAFTING, "early_verdict_arrived"): frozenset({EdgeState.DRAFTING}),
    (EdgeState.DRAFTING, "block_sent"): frozenset({EdgeState.DRAFTING}),
    (EdgeState.DRAFTING, "block_dropped"): frozenset({EdgeState.DRAFTING}),
    (EdgeState.IN_FLIGHT, "drafted"): frozenset({EdgeState.IN_FLIGHT}),
    (EdgeState.IN_FLIGHT, "early_verdict_arrived"): frozenset({EdgeState.IN_FLIGHT}),
    (EdgeState.IN_FLIGHT, "final_verdict_arrived"): frozenset(EdgeState) - {EdgeState.IDLE},
    (EdgeState.IN_FLIGHT, "block_sent"): frozenset({EdgeState.IN_FLIGHT}),
    (EdgeState.IN_FLIGHT, "block_dropped"): frozenset({EdgeState.IN_FLIGHT}),
    # Late news after the end (a draft that was stopping, a hint, a drop) changes nothing.
    (EdgeState.FINISHED, "drafted"): frozenset({EdgeState.FINISHED}),
    (EdgeState.FINISHED, "early_verdict_arrived"): frozenset({EdgeState.FINISHED}),
    (EdgeState.FINISHED, "block_sent"): frozenset({EdgeState.FINISHED}),
    (EdgeState.FINISHED, "block_dropped"): frozenset({EdgeState.FINISHED}),
}


class EdgeRounds:
    """One session's rounds. ``gen`` (the committed text and stats) outlives the session.

    Each event method is named for the event it takes (``drafted(Drafted(...))``) and returns the
    actions to take; ``state`` says where the round is (``_TRANSITIONS`` above)."""

    def __init__(self, gen: Generation) -> None:
        self.gen = gen
        self.mode = gen.mode
        self.predraft = gen.mode.predrafts
        self.pipelined = gen.mode is Mode.SD_EE_PIPELINED
        self.guess = self.predraft and gen.config.guess_verdict
        self.max_branches = gen.config.branches
        self.runner_up = gen.config.runner_up
        self.round = 0  # every session numbers its rounds from 0
        self.state = EdgeState.IDLE
        self._ids = itertools.count()
        self._waiting_for: int | None = None  # the draft that becomes the current round's block
        self._pending_guess: tuple[Branch, Verdict] | None = None  # a guess still drafting when its verdict came
        self._in_flight: _InFlight | None = None
        self._latest: Verdict | None = None  # the last early verdict of the round in flight
        self._branches: list[Branch] = []
        self._deferred_exit: tuple[Verdict, str] | None = None  # an exit verdict waiting on the open guess
        self._gate = BranchPayoff()

    # ---------------------------------------------------------------- events

    def started(self) -> list[EdgeAction]:
        """The session began: draft the first block."""
        self._enter("started")
        return self._moved("started", [self._draft_current()])

    def drafted(self, event: Drafted) -> list[EdgeAction]:
        self._enter("drafted")
        return self._moved("drafted", self._on_drafted(event.draft_id, event.block, event.start, event.end))

    def early_verdict_arrived(self, event: EarlyVerdictArrived) -> list[EdgeAction]:
        self._enter("early_verdict_arrived")
        return self._moved("early_verdict_arrived", self._on_early(event.round, event.layer, event.verdict, event.at))

    def final_verdict_arrived(self, event: FinalVerdictArrived) -> list[EdgeAction]:
        self._enter("final_verdict_arrived")
        return self._moved("final_verdict_arrived", self._on_final(event))

    def block_sent(self, event: BlockSent) -> list[EdgeAction]:
        """A held block left: the wait for its verdict starts then, not when it was drafted."""
        self._enter("block_sent")
        if event.round == self.round and self._in_flight is not None:
            self._in_flight.sent_at = event.at
        return self._moved("block_sent", [])

    def block_dropped(self, event: BlockDropped) -> list[EdgeAction]:
        self._enter("block_dropped")
        self.gen.stats.dropped += 1
        return self._moved("block_dropped", [])

    # ---------------------------------------------------------------- state

    def _enter(self, event: str) -> None:
        if (self.state, event) not in _TRANSITIONS:
            raise ProtocolViolation(f"{event} while the edge's round {self.round} is {self.state.value}")

    def _moved(self, event: str, actions: list[EdgeAction]) -> list[EdgeAction]:
        if self.gen.finished:
            state = EdgeState.FINISHED
        else:
            state = EdgeState.IN_FLIGHT if self._in_flight is not None else EdgeState.DRAFTING
        assert state in _TRANSITIONS[(self.state, event)], f"{event}: {self.state} -> {state}"
        self.state = state
        return actions

    # ---------------------------------------------------------------- event handling

    def _on_drafted(self, draft_id: int, block: DraftBlock, start: float, end: float) -> list[EdgeAction]:
        gen = self.gen
        branch = next((b for b in self._branches if b.id == draft_id), None)
        pending = (
            self._pending_guess if self._pending_guess is not None and self._pending_guess[0].id == draft_id else None
        )
        gen.stats.draft_s += end - start
        what = DraftKind.PRE_DRAFT if branch or pending else DraftKind.DRAFT
        gen.record("edge", what, start, end, self.round + bool(branch))
        if draft_id == self._waiting_for:
            self._waiting_for = None
            return self._send_current(block, end - start, end)
        if pending is not None:  # the verdict came while the guess was drafting: now it is known
            guess, verdict = pending
            self._pending_guess = None
            right = bool(block.tokens) and block.tokens[0] == verdict.next_token
            self._score_guess(right)
            if right and len(block.tokens) > 1:
                return self._send_current(block.without_first(), end - start, end)
            # Wrong, or right but stopped after the bonus: a block must carry a draft token.
            return [self._draft_current()]
        if branch is None or branch.block is not None:
            return []  # a draft that was cancelled while it ran
        branch.draft_s = end - start
        if len(block.tokens) < (2 if branch.assumed is None else 1):
            # Stopped before a draft token of its own (a guess's first is the bonus it assumes).
            self._branches.remove(branch)
            return []
        if branch.assumed is None:  # the guess: its first token is the bonus it assumes
            assert self._in_flight is not None
            branch.assumed = Verdict(len(self._in_flight.block.tokens), block.tokens[0])
            if clip_to_stop(branch.assumed.committed(self._in_flight.block.tokens), gen.eos, gen.budget()).finished:
                self._branches.remove(branch)  # it assumes the end of the text: nothing to pre-draft
                return []
            block = block.without_first()
            deferred, self._deferred_exit = self._deferred_exit, None
            if deferred is not None and deferred[0] != branch.assumed:
                actions = self._branch(*deferred)
                branch.block = block
                return actions + self._ship(branch)
        branch.block = block
        return self._ship(branch)

    def _ship(self, branch: Branch) -> list[EdgeAction]:
        gen = self.gen
        if self.pipelined:
            branch.tagged = True
            gen.stats.branches_shipped += 1
            return [SendBlock(self.round + 1, branch.block, assumes=(self.round, branch.assumed))]
        return []

    def _on_early(self, round_index: int, layer: int, verdict: Verdict, at: float) -> list[EdgeAction]:
        if round_index != self.round or self._in_flight is None:
            return []  # late news of a finished round
        self._latest = verdict
        self.gen.record("link", f"early@{layer}", at, at, round_index)
        if not self.predraft or any(b.assumed == verdict for b in self._branches):
            return []
        if verdict.accepted == len(self._in_flight.block.tokens) and any(b.assumed is None for b in self._branches):
            # The exit agrees the whole block goes through: the open guess drafts that very
            # branch unless its bonus differs, which is known once it has drafted its first token.
            self._deferred_exit = (verdict, f"exit {layer}")
            return []
        return self._branch(verdict, f"exit {layer}")

    def _count_round(self, event: FinalVerdictArrived, current: _InFlight) -> None:
        """The accounting of one decided round: stats, the branch and γ policies' records."""
        gen, stats, verdict, at = self.gen, self.gen.stats, event.verdict, event.at
        block = current.block
        stats.wait_s += at - current.sent_at
        stats.server_verify_s += event.verify_s
        gen.record("cloud", "verify (server)", at - event.verify_s, at, event.round)
        stats.rounds += 1
        stats.target_passes += 1
        stats.drafted += len(block.tokens)
        stats.accepted += verdict.accepted
        stats.count_gamma(len(block.tokens))
        stats.pipelined += int(event.pipelined)
        waited = at - current.sent_at
        self._gate.observe_round(len(block.tokens), verdict.accepted, current.draft_s, waited, first=event.round == 0)
        if self.runner_up and block.runner_up is not None:
            self._gate.observe_runner_ups([guess == verdict for guess in runner_up_verdicts(block)])
        if gen.gamma_policy is not None:
            # A pre-drafted block's draft time was hidden behind the last verify; charging it
            # anyway keeps the model simple and errs towards shorter blocks.
            gen.gamma_policy.observe(
                len(block.tokens), verdict.accepted, current.draft_s, event.verify_s, current.draft_s + waited
            )

    def _on_final(self, event: FinalVerdictArrived) -> list[EdgeAction]:
        gen, verdict, at = self.gen, event.verdict, event.at
        if event.round != self.round or self._in_flight is None:
            raise ProtocolViolation(f"final verdict for round {event.round} while round {self.round} is in flight")
        current = self._in_flight
        block = current.block
        if not 0 <= verdict.accepted <= len(block.tokens):
            raise ProtocolViolation(f"verdict accepts {verdict.accepted} of {len(block.tokens)} tokens")
        self._count_round(event, current)
        step = clip_to_stop(verdict.committed(block.tokens), gen.eos, gen.budget())
        gen.commit(step.tokens, at)
        actions: list[EdgeAction] = [Commit(step.tokens)]
        branches = self._branches
        hit = next((b for b in branches if b.assumed == verdict), None)
        # A guess still drafting may yet be right: only if the whole block was accepted.
        open_guess = next((b for b in branches if b.assumed is None and verdict.accepted == len(block.tokens)), None)
        self._in_flight, self._branches, self._deferred_exit = None, [], None
        keep = hit or open_guess
        actions += [CancelDraft(b.id) for b in branches if b.block is None and b is not keep]
        finished = step.finished or event.server_finished
        if not (open_guess is not None and hit is None and not finished):
            self._score(verdict, hit, branches)
        self._latest = None
        if finished:
            gen.finish(step.reason or FinishReason.LENGTH)  # the server may end it (its budget)
            if keep is not None and keep.block is None:
                actions.append(CancelDraft(keep.id))
            return actions + [Finished(gen.stats.finish_reason)]
        self.round += 1
        if hit is None and open_guess is not None:
            self._pending_guess = (open_guess, verdict)  # decided when it has drafted its first token
            return actions
        if hit is None:
            return actions + [self._draft_current()]
        if hit.block is None:
            self._waiting_for = hit.id  # still drafting: it becomes this round's block
            return actions
        if hit.tagged:  # already at the server, verified as we speak
            self._in_flight = _InFlight(hit.block, hit.draft_s, at)
            return actions + self._guess_branch()
        return actions + self._send_current(hit.block, hit.draft_s, at)

    # ---------------------------------------------------------------- helpers

    def _score(self, verdict: Verdict, hit: Branch | None, branches: list[Branch]) -> None:
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
        elif branches:
            stats.misses += 1
        else:
            stats.no_hint += 1

    def _score_guess(self, right: bool) -> None:
        stats = self.gen.stats
        if right:
            stats.hits += 1
            stats.hits_by_source["guess"] = stats.hits_by_source.get("guess", 0) + 1
        else:
            stats.misses += 1

    def _draft_current(self) -> Draft:
        draft = Draft(next(self._ids), list(self.gen.committed), self.gen.gamma(), self.round, DraftKind.DRAFT)
        self._waiting_for = draft.id
        return draft

    def _send_current(self, block: DraftBlock, draft_s: float, at: float) -> list[EdgeAction]:
        self._in_flight = _InFlight(block, draft_s, at)
        return [SendBlock(self.round, block)] + self._guess_branch()

    def _guess_branch(self) -> list[EdgeAction]:
        """Pre-draft at once on the likeliest verdicts, known at send time: the guess (the whole
        block accepted, with the draft's own next token as the bonus, drafted first as the
        branch's first token), then, in the branches it leaves, runner-up guesses, likeliest first
        by this session's record; each only while it pays on the edge's one draft thread."""
        assert self._in_flight is not None
        block = self._in_flight.block
        if not self.guess:
            return []
        # A block that ends the text (EOS, or the budget with its bonus) leaves nothing to guess.
        if clip_to_stop(list(block.tokens) + [-1], self.gen.eos, self.gen.budget()).finished:
            return []
        options: list[tuple[float, Verdict | None, str]] = [(self._gate.hit_rate(len(block.tokens)), None, "guess")]
        if self.runner_up and block.runner_up is not None:
            # With early verdicts coming, one branch stays free for the exits' corrections.
            room = self.max_branches - 1 - int(self.gen.config.wants_early_verdicts(self.mode))
            for rank, verdict in enumerate(runner_up_verdicts(block)[: max(0, room)]):
                options.append(
                    (self._gate.runner_up_rate(rank), verdict, "runner-up" if rank == 0 else f"runner-up {rank + 1}")
                )
        # The guess drafts first: it also drafts the bonus (which the runner-ups' record cannot
        # price), and its α^(γ+1) undercounts runs of whole accepted blocks, so ordering by the
        # priced rate alone would put it behind runner-ups that pay less.
        options[1:] = sorted(options[1:], key=lambda option: -option[0])
        actions: list[EdgeAction] = []
        queued = 0  # tokens already queued on the draft thread ahead of the next branch
        for rate, verdict, source in options:
            if len(self._branches) >= self.max_branches:
                break
            if verdict is None:
                sequence, gamma = self.gen.committed + list(block.tokens), self.gen.gamma(len(block.tokens) + 1) + 1
            else:
                assumed = clip_to_stop(verdict.committed(block.tokens), self.gen.eos, self.gen.budget())
                if assumed.finished:
                    continue  # it assumes the end of the text: nothing to pre-draft
                sequence, gamma = self.gen.committed + assumed.tokens, self.gen.gamma(len(assumed.tokens))
            if not self._gate.pays(rate, queued, gamma):
                continue
            # The guess's first token is the bonus it assumes, not part of its block: it needs one more.
            min_tokens = 2 if verdict is None else 1
            draft = Draft(next(self._ids), sequence, gamma, self.round + 1, DraftKind.PRE_DRAFT, min_tokens=min_tokens)
            self._branches.append(Branch(draft.id, verdict, source))
            self.gen.stats.branches += 1
            actions.append(draft)
            queued += gamma
        return actions

    def _branch(self, verdict: Verdict, source: str) -> list[EdgeAction]:
        assert self._in_flight is not None
        actions: list[EdgeAction] = []
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
        draft = Draft(next(self._ids), self.gen.committed + assumed.tokens, gamma, self.round + 1, DraftKind.PRE_DRAFT)
        self._branches.append(Branch(draft.id, verdict, source))
        self.gen.stats.branches += 1
        return actions + [draft]
