"""cloud-sd, sans I/O: speculative decoding entirely on the server (the co-located baseline).

The server drafts each block with a draft model of its own, verifies it with the same round core
and verification rule as edge speculation (``VerifierRounds``, ``decoding/block_scoring.begin_round``), and
streams the committed tokens to the client, which only receives, as in ``cloud-ar``. So cloud-sd
is lossless by the same code as ``sd``; what differs is who pays for the draft: the server's
processor, between its target forwards.

A round: ``next_draft()`` -> the driver drafts on the server -> ``drafted(ServerDrafted)`` returns
the ``Verify`` the driver runs -> ``verified(ColocatedVerified)`` returns the ``CloudRound`` whose
committed tokens go to the client. States (``ColocatedState``): READY -> (drafted) VERIFYING ->
(verified) READY or FINISHED; a draft while VERIFYING or a verdict while READY raises
``ProtocolViolation``. No sockets, threads or clocks: the gRPC servicer and the discrete-event world
drive it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from edgespec.core.block import DraftBlock
from edgespec.core.errors import ProtocolViolation
from edgespec.core.gamma import AdaptiveGamma
from edgespec.core.verdict import Verdict
from edgespec.core.verifier import IncomingBlock, SendFinal, Verified, VerifierRounds, Verify


@dataclass(frozen=True)
class ServerDraft:
    """Draft ``gamma`` tokens after ``sequence`` with the server's draft; report with ``drafted``."""

    round: int
    sequence: list[int]
    gamma: int
    stop_below: float = 0.0  # greedy: end the block after a token the draft is less sure of


@dataclass(frozen=True, kw_only=True)
class ServerDrafted:
    """The server's draft of ``step`` produced ``block`` in ``draft_s``."""

    step: ServerDraft
    block: DraftBlock
    draft_s: float


@dataclass(frozen=True, kw_only=True)
class ColocatedVerified:
    """The forward of ``verify`` gave ``verdict`` after ``verify_s`` of compute, ``round_s``
    after the round's draft started."""

    verify: Verify
    verdict: Verdict
    verify_s: float
    round_s: float


class ColocatedState(Enum):
    READY = "ready"  # between rounds: ``next_draft`` says what to draft
    VERIFYING = "verifying"  # the round's block is drafted and being verified
    FINISHED = "finished"  # the text is complete (or the session closed)


@dataclass(frozen=True)
class CloudRound:
    """What one finished round tells the client besides its tokens (for its accounting)."""

    final: SendFinal
    drafted: int
    draft_s: float
    verify_s: float


class ColocatedRounds:
    """One cloud-sd session's rounds on the server. γ is fixed, or chosen each round by the same
    adaptive policy the edge uses (``core/gamma.py``), fed the server's own draft and
    verify times."""

    def __init__(
        self, rounds: VerifierRounds, gamma: int, policy: AdaptiveGamma | None = None, stop_below: float = 0.0
    ) -> None:
        if not 1 <= gamma <= 64:
            raise ValueError(f"gamma must be in 1..64, got {gamma}")
        self.rounds = rounds
        self.gamma = gamma
        self.policy = policy
        self.stop_below = stop_below  # the same confidence stop as the edge's draft (--draft-stop)
        self._draft: tuple[ServerDraft, float] | None = None  # the round in flight and its draft seconds

    @property
    def finished(self) -> bool:
        return self.rounds.finished

    @property
    def state(self) -> ColocatedState:
        if self.rounds.finished or self.rounds.closed:
            return ColocatedState.FINISHED
        return ColocatedState.VERIFYING if self._draft is not None else ColocatedState.READY

    def next_draft(self) -> ServerDraft | None:
        """The next round's draft, or None when the generation is over (or a round is in flight)."""
        rounds = self.rounds
        if rounds.finished or rounds.closed or self._draft is not None:
            return None
        chosen = self.policy.next_gamma() if self.policy is not None else self.gamma
        budget = rounds.max_new_tokens - rounds.produced
        return ServerDraft(rounds.decided, list(rounds.sequence), max(1, min(chosen, budget)), self.stop_below)

    def drafted(self, event: ServerDrafted) -> Verify:
        """The server drafted a block: the forward to run next."""
        step, block = event.step, event.block
        if self.state is not ColocatedState.READY:
            raise ProtocolViolation(
                f"a draft for round {step.round} while round {self.rounds.decided} is being verified"
            )
        if step.round != self.rounds.decided or not block.tokens:
            raise ProtocolViolation(f"a draft for round {step.round} while round {self.rounds.decided} is next")
        actions = self.rounds.block_arrived(IncomingBlock(step.round, list(block.tokens), block.probs))
        (verify,) = actions  # a plain block while nothing is verified: always verified at once
        assert isinstance(verify, Verify)
        self._draft = (step, event.draft_s)
        return verify

    def verified(self, event: ColocatedVerified) -> CloudRound:
        """The forward gave its verdict: commit, and what to stream."""
        if self._draft is None:
            raise ProtocolViolation(f"a verdict while round {self.rounds.decided} is {self.state.value}")
        verify, verdict, verify_s = event.verify, event.verdict, event.verify_s
        _, draft_s = self._draft
        self._draft = None
        actions = self.rounds.verified(Verified(verify=verify, verdict=verdict))
        final = actions[0]
        assert isinstance(final, SendFinal) and len(actions) == 1  # nothing is held: cloud-sd ships no pre-drafts
        gamma = len(verify.block.tokens)
        if self.policy is not None:
            self.policy.observe(gamma, verdict.accepted, draft_s, verify_s, max(event.round_s, draft_s + verify_s))
        return CloudRound(final, gamma, draft_s, verify_s)
