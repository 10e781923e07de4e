"""The cloud side of speculative rounds, sans I/O.

Feed it blocks as they arrive (plain, or tagged with the verdict they assume), the early verdicts
an exit reached mid-forward, and the final verdict of each forward; it answers with what to verify
next, what to stream and what to drop. Blocks are held per round, so a pipelined block that
arrives while the round it depends on is still being verified waits here, not on the link, and is
verified the moment that verdict is decided if its assumption held (and dropped unverified if not).
It knows nothing of gRPC, tensors or threads: its driver runs the forwards.

Events are past-tense methods taking small values: ``block_arrived(IncomingBlock)``,
``exit_reached(ExitReached)``, ``decoded(Decoded)`` (cloud-ar), ``verified(Verified)`` and
``session_closed()``. States (``VerifierState``): WAITING for a block, VERIFYING one, FINISHED (the text
is complete: tagged blocks are dropped, plain ones refused), CLOSED (the session ended). A verdict
is legal only while VERIFYING and a decode only while WAITING (or CLOSED, for a forward that was
running); an illegal event raises ``OutOfOrder`` and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Collection

from edgespec.core.errors import ProtocolViolation
from edgespec.core.stopping import ClippedTokens, clip_to_stop
from edgespec.core.verdict import Verdict


class OutOfOrder(ProtocolViolation):
    """A block this session cannot take (wrong round, or after the generation finished)."""


class VerifierState(Enum):
    WAITING = "waiting"
    VERIFYING = "verifying"
    FINISHED = "finished"
    CLOSED = "closed"


# The events each state takes. Late news (an exit's verdict, a close) is always taken; a closed
# session still hears the end of a forward that was running when it closed (and streams nothing).
_LEGAL: dict[VerifierState, frozenset[str]] = {
    VerifierState.WAITING: frozenset({"block_arrived", "exit_reached", "decoded", "session_closed"}),
    VerifierState.VERIFYING: frozenset({"block_arrived", "exit_reached", "verified", "session_closed"}),
    VerifierState.FINISHED: frozenset({"block_arrived", "exit_reached", "session_closed"}),
    VerifierState.CLOSED: frozenset({"block_arrived", "exit_reached", "decoded", "verified", "session_closed"}),
}


@dataclass(frozen=True)
class IncomingBlock:
    round: int
    tokens: list[int]
    payload: Any = None  # what the driver needs to verify it (the draft's distributions)
    assumes: tuple[int, Verdict] | None = None
    candidates: Any = None  # greedy: the draft's top-k ids per token, for candidate-id exits


# ---------------------------------------------------------------- events


@dataclass(frozen=True, kw_only=True)
class ExitReached:
    """An exit at ``layer`` gave ``verdict`` for ``round``, ``elapsed_s`` into the forward;
    ``streamed``: it was sure enough for the client to act on."""

    round: int
    layer: int
    verdict: Verdict
    confidence: float
    elapsed_s: float
    streamed: bool


@dataclass(frozen=True, kw_only=True)
class Decoded:
    """cloud-ar: one decode chose ``token``."""

    token: int


@dataclass(frozen=True, kw_only=True)
class Verified:
    """The forward ``verify`` asked for gave ``verdict``."""

    verify: "Verify"
    verdict: Verdict


# ---------------------------------------------------------------- actions


@dataclass(frozen=True)
class Verify:
    """Run the forward for ``block`` after ``sequence``; report with a ``Verified`` event."""

    block: IncomingBlock
    sequence: list[int]

    @property
    def pipelined(self) -> bool:
        return self.block.assumes is not None


@dataclass(frozen=True)
class StreamEarly:
    round: int
    layer: int
    verdict: Verdict
    confidence: float
    elapsed_s: float


@dataclass(frozen=True)
class SendFinal:
    round: int
    verdict: Verdict
    committed: list[int]
    finished: bool
    pipelined: bool


@dataclass(frozen=True)
class Drop:
    round: int


@dataclass(frozen=True)
class Reject:
    """A held block turned out to be one the session cannot take: end it with OUT_OF_ORDER."""

    reason: str


ServerAction = Verify | StreamEarly | SendFinal | Drop | Reject


@dataclass
class VerifierRounds:
    """One session's verification order. ``sequence`` is prompt + committed tokens."""

    sequence: list[int]
    prompt_len: int
    eos_ids: Collection[int]
    max_new_tokens: int
    early_verdicts: bool = False
    decided: int = 0  # rounds with a final verdict
    verifying: bool = False
    last_verdict: Verdict | None = None
    finished: bool = False
    closed: bool = False  # the session ended: nothing more is streamed or started
    _waiting: dict[int, list[IncomingBlock]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.finished = self.produced >= self.max_new_tokens or (
            self.produced > 0 and self.sequence[-1] in self.eos_ids
        )

    @property
    def produced(self) -> int:
        return len(self.sequence) - self.prompt_len

    @property
    def state(self) -> VerifierState:
        if self.closed:
            return VerifierState.CLOSED
        if self.finished:
            return VerifierState.FINISHED
        return VerifierState.VERIFYING if self.verifying else VerifierState.WAITING

    def _check(self, event: str) -> None:
        if event not in _LEGAL[self.state]:
            raise OutOfOrder(f"{event} while the session is {self.state.value} (round {self.decided})")

    @property
    def held(self) -> int:
        """Blocks waiting for a verdict to be decided."""
        return sum(len(blocks) for blocks in self._waiting.values())

    # ---------------------------------------------------------------- events

    def block_arrived(self, block: IncomingBlock) -> list[ServerAction]:
        self._check("block_arrived")
        if block.assumes is not None:
            assumed_round, _ = block.assumes
            if self.finished or assumed_round + 1 != block.round or block.round != self.decided + int(self.verifying):
                return [Drop(block.round)]  # its premise is decided wrong already, or never will be
            if not self.verifying:
                return [Drop(block.round)] if not self._holds(block) else self._start(block)
            self._waiting.setdefault(block.round, []).append(block)
            return []
        if self.finished:
            raise OutOfOrder("the generation has finished; no more blocks are accepted")
        expected = self.decided + int(self.verifying)
        if block.round != expected or any(b.assumes is None for b in self._waiting.get(block.round, [])):
            raise OutOfOrder(f"block for round {block.round}, expected round {expected}")
        if self.verifying:
            self._waiting.setdefault(block.round, []).append(block)
            return []
        return self._start(block)

    def exit_reached(self, event: ExitReached) -> list[ServerAction]:
        """An exit's verdict mid-forward: streamed when the client asked and the exit is sure."""
        self._check("exit_reached")
        wanted = self.early_verdicts and event.streamed
        if self.closed or not (wanted and self.verifying and event.round == self.decided):
            return []
        return [StreamEarly(event.round, event.layer, event.verdict, event.confidence, event.elapsed_s)]

    def decoded(self, event: Decoded) -> ClippedTokens:
        """cloud-ar: the token one decode chose, committed (or not, past EOS or the budget)."""
        self._check("decoded")
        step = clip_to_stop([event.token], self.eos_ids, self.max_new_tokens - self.produced)
        self.sequence.extend(step.tokens)
        self.finished = step.finished
        return step

    def verified(self, event: Verified) -> list[ServerAction]:
        """The forward of ``verify`` gave ``verdict``: commit, answer, and start what waits on it."""
        verify, verdict = event.verify, event.verdict
        block = verify.block
        if not self.verifying or block.round != self.decided:
            raise OutOfOrder(f"verdict for round {block.round} while round {self.decided} is verified")
        step = clip_to_stop(verdict.committed(block.tokens), self.eos_ids, self.max_new_tokens - self.produced)
        self.sequence.extend(step.tokens)
        self.decided += 1
        self.verifying = False
        self.last_verdict = verdict
        self.finished = step.finished
        actions: list[ServerAction] = [SendFinal(block.round, verdict, step.tokens, step.finished, verify.pipelined)]
        waiting = self._waiting.pop(self.decided, [])
        chosen = None
        for candidate in waiting:
            if chosen is None and not self.finished and (candidate.assumes is None or self._holds(candidate)):
                chosen = candidate
            elif candidate.assumes is not None:
                actions.append(Drop(candidate.round))
            else:
                actions.append(Reject("the generation has finished; no more blocks are accepted"))
        if chosen is not None:
            actions += self._start(chosen)
        return actions

    def session_closed(self) -> list[Drop]:
        """The session ended: every held block is dropped without compute."""
        self._check("session_closed")
        held = [Drop(b.round) for blocks in self._waiting.values() for b in blocks]
        self._waiting.clear()
        self.closed = True
        return held

    # ---------------------------------------------------------------- helpers

    def _holds(self, block: IncomingBlock) -> bool:
        assert block.assumes is not None
        assumed_round, verdict = block.assumes
        return assumed_round == self.decided - 1 and verdict == self.last_verdict

    def _start(self, block: IncomingBlock) -> list[ServerAction]:
        self.verifying = True
        return [Verify(block, list(self.sequence))]
