"""edge-only, sans I/O: the draft model alone decides, one token per step (a reference, not
lossless). The gRPC client and the in-process engine both run it, so they count the same stats
and stop at the same EOS or budget with the same ``FinishReason``.

States (``EdgeOnlyState``): DECODING until a chosen token ends the text, then FINISHED; a token
chosen after that raises ``ProtocolViolation``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from edgespec.core.edge_events import Commit, Finished
from edgespec.core.errors import ProtocolViolation
from edgespec.core.generation import Generation
from edgespec.core.stopping import clip_to_stop


@dataclass(frozen=True, kw_only=True)
class TokenChosen:
    """The draft chose ``token`` after the committed text, computing from ``start`` to ``end``."""

    token: int
    start: float
    end: float


class EdgeOnlyState(Enum):
    DECODING = "decoding"
    FINISHED = "finished"


EdgeOnlyAction = Commit | Finished


class EdgeOnlyRounds:
    """One edge-only generation; the driver draws each token after ``gen.committed``."""

    def __init__(self, gen: Generation) -> None:
        self.gen = gen
        self.state = EdgeOnlyState.FINISHED if gen.finished else EdgeOnlyState.DECODING

    def token_chosen(self, event: TokenChosen) -> list[EdgeOnlyAction]:
        if self.state is not EdgeOnlyState.DECODING:
            raise ProtocolViolation("a token chosen after the text finished")
        gen, stats = self.gen, self.gen.stats
        stats.draft_s += event.end - event.start
        stats.rounds += 1
        step = clip_to_stop([event.token], gen.eos, gen.budget())
        gen.commit(step.tokens, event.end)
        actions: list[EdgeOnlyAction] = [Commit(step.tokens)]
        if step.finished:
            gen.finish(step.reason)
            self.state = EdgeOnlyState.FINISHED
            actions.append(Finished(step.reason))
        return actions
