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
early verdicts; each guess is made only while it pays (``_BranchPayoff``: its hit rate in this
session against the draft step a wrong one wastes, and whether the edge can draft it before the
verdict). Only final verdicts commit tokens.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from edgespec.core.modes import Mode
from edgespec.core.stopping import clip_to_stop
from edgespec.core.verdict import Verdict
from edgespec.core.block import DraftBlock
from edgespec.core.generation import Generation


# ---------------------------------------------------------------- actions


@dataclass(frozen=True)
class Draft:
    """Draft ``gamma`` tokens after ``sequence``; report it with ``EdgeRounds.drafted(id, ...)``."""

    id: int
    sequence: list[int]
    gamma: int
    round: int  # the round the block is for
    what: str  # "draft" | "pre-draft"
    min_tokens: int = 1  # the fewest tokens to draft whatever the draft's confidence (``draft_stop``)


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
    """A pre-draft of the next block on one assumed verdict of the round in flight. The guess
    branch drafts from the block itself: its first token is the draft's guess of the bonus, so its
    verdict is known only once it has drafted (``assumed`` is None until then)."""

    id: int
    assumed: Verdict | None
    source: str  # "guess" | "exit <layer>"
    block: DraftBlock | None = None
    draft_s: float = 0.0
    tagged: bool = False  # shipped before the final verdict (pipelined)


@dataclass
class _InFlight:
    block: DraftBlock
    draft_s: float
    sent_at: float


class _BranchPayoff:
    """Whether guessing pays in this session. A right guess saves the draft time the verify and
    the round trip hide (at most). A wrong one costs only what it delays the real draft: nothing
    when the guess has finished drafting before the verdict arrives (the edge was idle anyway),
    else the draft step it is stopped in. A guess is right when the whole block is accepted and
    the bonus is the draft's own next token: about α^(γ+1) for a per-token acceptance α,
    estimated (decayed) from every round, guessed or not."""

    def __init__(self, decay: float = 0.8) -> None:
        self.decay = decay
        self._accepted = 0.0
        self._rejected = 0.0
        self.step_s: float | None = None  # draft seconds per token (the first block, with its prefill, excluded)
        self.wait_s: float | None = None  # block sent -> final verdict
        self._runner_up: dict[int, tuple[float, float]] = {}  # rank -> decayed (right, seen)

    def _mix(self, old: float | None, new: float) -> float:
        return new if old is None else self.decay * old + (1 - self.decay) * new

    def observe_round(self, gamma: int, accepted: int, draft_s: float, wait_s: float, first: bool) -> None:
        self._accepted = self.decay * self._accepted + accepted
        self._rejected = self.decay * self._rejected + (1 if accepted < gamma else 0)
        if gamma and not first:
            self.step_s = self._mix(self.step_s, draft_s / gamma)
        self.wait_s = self._mix(self.wait_s, wait_s)

    def hit_rate(self, block: int) -> float:
        """A guess on a block of ``block`` tokens is right with about α^(block + 1)."""
        seen = self._accepted + self._rejected
        alpha = self._accepted / seen if seen else 0.8
        return alpha ** (block + 1)

    def pays(self, hit_rate: float, queued_tokens: int, tokens: int) -> bool:
        """Draft a branch of ``tokens`` right with ``hit_rate``, behind ``queued_tokens`` already
        queued on the edge's one draft thread? A hit saves what it drafted before the verdict (a
        branch still drafting then becomes the block); a miss wastes the step it is stopped in,
        when it is still drafting at the verdict, else nothing (the edge was idle)."""
        if self.step_s is None or self.wait_s is None:
            return True
        start_s = queued_tokens * self.step_s
        saved_s = min(tokens * self.step_s, max(0.0, self.wait_s - start_s))
        wasted_s = self.step_s if start_s + tokens * self.step_s > self.wait_s else 0.0
        return saved_s > 0 and hit_rate * saved_s >= (1 - hit_rate) * wasted_s

    def observe_runner_ups(self, right: list[bool]) -> None:
        """Whether each runner-up guess (by rank: the least sure position first) was the verdict."""
        for rank, hit in enumerate(right):
            hits, seen = self._runner_up.get(rank, (0.0, 0.0))
            self._runner_up[rank] = (self.decay * hits + hit, self.decay * seen + 1)

    def runner_up_rate(self, rank: int) -> float:
        hits, seen = self._runner_up.get(rank, (0.0, 0.0))
        # Before any record: the rate ShareGPT rounds show for the first runner-up (≈ 0.14 at γ = 4).
        return hits / seen if seen else 0.15 / (rank + 1)


class EdgeRounds:
    """One session's rounds. ``gen`` (the committed text and stats) outlives the session."""

    def __init__(self, gen: Generation) -> None:
        self.gen = gen
        self.mode = gen.mode
        self.predraft = gen.mode.predrafts
        self.pipelined = gen.mode is Mode.SD_EE_PIPELINED
        self.guess = self.predraft and gen.config.guess_verdict
        self.max_branches = gen.config.branches
        self.runner_up = gen.config.runner_up
        self.round = 0  # every session numbers its rounds from 0
        self._ids = itertools.count()
        self._waiting_for: int | None = None  # the draft that becomes the current round's block
        self._pending_guess: tuple[_Branch, Verdict] | None = None  # a guess still drafting when its verdict came
        self._in_flight: _InFlight | None = None
        self._latest: Verdict | None = None  # the last early verdict of the round in flight
        self._branches: list[_Branch] = []
        self._deferred_exit: tuple[Verdict, str] | None = None  # an exit verdict waiting on the open guess
        self._gate = _BranchPayoff()

    # ---------------------------------------------------------------- events

    def start(self) -> list[ClientAction]:
        return [self._draft_current()]

    def drafted(self, draft_id: int, block: DraftBlock, start: float, end: float) -> list[ClientAction]:
        gen = self.gen
        branch = next((b for b in self._branches if b.id == draft_id), None)
        pending = self._pending_guess if self._pending_guess is not None and self._pending_guess[0].id == draft_id else None
        gen.stats.draft_s += end - start
        gen.record("edge", "pre-draft" if branch or pending else "draft", start, end, self.round + bool(branch))
        if draft_id == self._waiting_for:
            self._waiting_for = None
            return self._send_current(block, end - start, end)
        if pending is not None:  # the verdict came while the guess was drafting: now it is known
            guess, verdict = pending
            self._pending_guess = None
            right = bool(block.tokens) and block.tokens[0] == verdict.next_token
            self._score_guess(right)
            if right:
                return self._send_current(block.without_first(), end - start, end)
            return [self._draft_current()]
        if branch is None or branch.block is not None:
            return []  # a draft that was cancelled while it ran
        branch.draft_s = end - start
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

    def _ship(self, branch: _Branch) -> list[ClientAction]:
        gen = self.gen
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
        if verdict.accepted == len(self._in_flight.block.tokens) and any(b.assumed is None for b in self._branches):
            # The exit agrees the whole block goes through: the open guess drafts that very
            # branch unless its bonus differs, which is known once it has drafted its first token.
            self._deferred_exit = (verdict, f"exit {layer}")
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
        self._gate.observe_round(len(block.tokens), verdict.accepted, current.draft_s, at - current.sent_at, first=round_index == 0)
        if self.runner_up and block.runner_up is not None:
            self._gate.observe_runner_ups([guess == verdict for guess in _runner_up_verdicts(block)])
        if gen.gamma_policy is not None:
            # A pre-drafted block's draft time was hidden behind the last verify; charging it
            # anyway keeps the model simple and errs towards shorter blocks.
            gen.gamma_policy.observe(len(block.tokens), verdict.accepted, current.draft_s, verify_s, current.draft_s + at - current.sent_at)
        step = clip_to_stop(verdict.committed(block.tokens), gen.eos, gen.budget())
        gen.commit(step.tokens, at)
        actions: list[ClientAction] = [Commit(step.tokens)]
        branches = self._branches
        hit = next((b for b in branches if b.assumed == verdict), None)
        # A guess still drafting may yet be right: only if the whole block was accepted.
        open_guess = next((b for b in branches if b.assumed is None and verdict.accepted == len(block.tokens)), None)
        self._in_flight, self._branches, self._deferred_exit = None, [], None
        keep = hit or open_guess
        actions += [CancelDraft(b.id) for b in branches if b.block is None and b is not keep]
        finished = step.finished or server_finished
        if not (open_guess is not None and hit is None and not finished):
            self._score(verdict, hit, branches)
        self._latest = None
        if finished:
            gen.finish(step.reason or "length")  # the server may end it (its budget)
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

    def sent(self, round_index: int, at: float) -> None:
        """A block the driver had to hold (the session was not open yet) left at ``at``: the
        wait for its verdict starts then."""
        if round_index == self.round and self._in_flight is not None:
            self._in_flight.sent_at = at

    def dropped(self, round_index: int) -> list[ClientAction]:
        self.gen.stats.dropped += 1
        return []

    # ---------------------------------------------------------------- helpers

    def _score(self, verdict: Verdict, hit: _Branch | None, branches: list[_Branch]) -> None:
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
        draft = Draft(next(self._ids), list(self.gen.committed), self.gen.gamma(), self.round, "draft")
        self._waiting_for = draft.id
        return draft

    def _send_current(self, block: DraftBlock, draft_s: float, at: float) -> list[ClientAction]:
        self._in_flight = _InFlight(block, draft_s, at)
        return [SendBlock(self.round, block)] + self._guess_branch()

    def _guess_branch(self) -> list[ClientAction]:
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
            for rank, verdict in enumerate(_runner_up_verdicts(block)[: max(0, room)]):
                options.append((self._gate.runner_up_rate(rank), verdict, "runner-up" if rank == 0 else f"runner-up {rank + 1}"))
        # The guess drafts first: it also drafts the bonus (which the runner-ups' record cannot
        # price), and its α^(γ+1) undercounts runs of whole accepted blocks (on held-out ShareGPT
        # traces, likeliest-first ordering cost 1 % against guess-first).
        options[1:] = sorted(options[1:], key=lambda option: -option[0])
        actions: list[ClientAction] = []
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
            draft = Draft(next(self._ids), sequence, gamma, self.round + 1, "pre-draft", min_tokens=2 if verdict is None else 1)
            self._branches.append(_Branch(draft.id, verdict, source))
            self.gen.stats.branches += 1
            actions.append(draft)
            queued += gamma
        return actions

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
        draft = Draft(next(self._ids), self.gen.committed + assumed.tokens, gamma, self.round + 1, "pre-draft")
        self._branches.append(_Branch(draft.id, verdict, source))
        self.gen.stats.branches += 1
        return actions + [draft]


def _runner_up_verdicts(block: DraftBlock) -> list[Verdict]:
    """Each drafted position's rejection, corrected to the draft's runner-up there, likeliest
    first by the draft's own confidences: P(reject at w) ≈ c_0 ⋯ c_(w-1) · (1 − c_w). (On
    held-out ShareGPT rounds, γ = 4, this order makes the first one right in 17 % of rounds,
    against 14 % for the least sure position alone.)"""
    assert block.confidence is not None and block.runner_up is not None
    likelihood, reach = [], 1.0
    for sure in block.confidence:
        likelihood.append(reach * (1.0 - sure))
        reach *= sure
    order = sorted(range(len(block.tokens)), key=lambda w: -likelihood[w])
    return [Verdict(w, block.runner_up[w]) for w in order if block.runner_up[w] != block.tokens[w]]
