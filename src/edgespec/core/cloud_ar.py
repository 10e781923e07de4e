"""The edge side of the receive-only modes, sans I/O: ``cloud-ar`` (the server decodes) and the
edge side of ``cloud-sd`` (the server drafts and verifies, ``colocated.py``). The edge drafts
nothing; it receives the committed tokens of each server pass and ends the text where the
server says it ends.

One machine for every driver, so the gRPC client and the virtual-clock driver count the same
stats and finish with the same ``FinishReason``: EOS when the text's last token is one of the
session's EOS ids, else the length budget (the server stops only at one or the other).

States (``ReceiveState``): RECEIVING until a message says the text is finished, then FINISHED;
any message after that raises ``ProtocolViolation``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from edgespec.core.edge_events import Commit, Finished
from edgespec.core.errors import ProtocolViolation
from edgespec.core.generation import Generation
from edgespec.core.stopping import finish_reason_of


@dataclass(frozen=True, kw_only=True)
class TokensDecoded:
    """cloud-ar: the server's decode pass (``compute_s`` of it) committed ``tokens``."""

    tokens: list[int]
    finished: bool
    compute_s: float
    at: float


@dataclass(frozen=True, kw_only=True)
class CloudRoundDecided:
    """cloud-sd: one server round drafted ``drafted`` tokens in ``draft_s``, accepted ``accepted``
    of them after ``verify_s`` of verify, and committed ``tokens``. A resumed session whose text
    was already complete gets one such message with nothing drafted: it is no round."""

    tokens: list[int]
    finished: bool
    drafted: int
    accepted: int
    draft_s: float
    verify_s: float
    at: float


class ReceiveState(Enum):
    RECEIVING = "receiving"
    FINISHED = "finished"


ReceiveAction = Commit | Finished


class ReceiveOnlyRounds:
    """One receive-only session's view from the edge; ``gen`` outlives the session."""

    def __init__(self, gen: Generation) -> None:
        self.gen = gen
        self.state = ReceiveState.FINISHED if gen.finished else ReceiveState.RECEIVING

    def tokens_decoded(self, event: TokensDecoded) -> list[ReceiveAction]:
        self._check("tokens decoded")
        self.gen.count_decode(event.compute_s)
        return self._committed(event.tokens, event.finished, event.at)

    def cloud_round_decided(self, event: CloudRoundDecided) -> list[ReceiveAction]:
        self._check("a cloud round decided")
        if event.drafted:
            self.gen.count_cloud_round(event.drafted, event.accepted, event.draft_s, event.verify_s)
        return self._committed(event.tokens, event.finished, event.at)

    def _check(self, what: str) -> None:
        if self.state is not ReceiveState.RECEIVING:
            raise ProtocolViolation(f"{what} after the text finished")

    def _committed(self, tokens: list[int], finished: bool, at: float) -> list[ReceiveAction]:
        gen = self.gen
        gen.commit(tokens, at)
        actions: list[ReceiveAction] = [Commit(list(tokens))]
        if finished:
            gen.finish(finish_reason_of(gen.committed, gen.produced, gen.eos))
            self.state = ReceiveState.FINISHED
            actions.append(Finished(gen.stats.finish_reason))
        return actions
