"""What the edge's round machines are told and what they answer.

Events are what happened, named in the past tense, as small frozen values with keyword-only
fields; the driver hands each to the machine method of the same name (``EdgeRounds.drafted``,
``EdgeRounds.final_verdict_arrived``, ...). Actions are what the driver must do next. Times are
seconds on the driver's clock (a wall clock over gRPC, a virtual one in process).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from edgespec.core.block import DraftBlock
from edgespec.core.stopping import FinishReason
from edgespec.core.verdict import Verdict

# ---------------------------------------------------------------- events


@dataclass(frozen=True, kw_only=True)
class Drafted:
    """The draft ``draft_id`` (a ``Draft`` action's) produced ``block`` between ``start`` and ``end``."""

    draft_id: int
    block: DraftBlock
    start: float
    end: float


@dataclass(frozen=True, kw_only=True)
class EarlyVerdictArrived:
    """An exit at ``layer`` predicted ``verdict`` for ``round`` (a hint: it commits nothing)."""

    round: int
    layer: int
    verdict: Verdict
    at: float


@dataclass(frozen=True, kw_only=True)
class FinalVerdictArrived:
    """The target decided ``round``: ``verdict`` after ``verify_s`` of server compute.
    ``server_finished``: the server ended the text (its budget); ``pipelined``: the block was a
    pipelined pre-draft, verified without a round trip."""

    round: int
    verdict: Verdict
    server_finished: bool
    pipelined: bool
    verify_s: float
    at: float


@dataclass(frozen=True, kw_only=True)
class BlockSent:
    """A block the driver had to hold (the session was not open yet) left at ``at``."""

    round: int
    at: float


@dataclass(frozen=True, kw_only=True)
class BlockDropped:
    """The server dropped the pipelined block of ``round`` unverified (its assumption failed)."""

    round: int


# ---------------------------------------------------------------- actions


class DraftKind(StrEnum):
    DRAFT = "draft"  # the current round's block
    PRE_DRAFT = "pre-draft"  # a branch: the next round's block on an assumed verdict


@dataclass(frozen=True)
class Draft:
    """Draft ``gamma`` tokens after ``sequence``; report it with a ``Drafted`` event."""

    id: int
    sequence: list[int]
    gamma: int
    round: int  # the round the block is for
    what: DraftKind
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
    """Final tokens: the generation has committed them and told its listeners."""

    tokens: list[int]


@dataclass(frozen=True)
class Finished:
    reason: FinishReason


EdgeAction = Draft | CancelDraft | SendBlock | Commit | Finished
