"""One generation's state on the edge: the committed text and the accounting that every session of
it adds to (the first, each one re-opened after an outage, and edge-only stretches between).

During an outage the draft alone decides *provisional* tokens. They wait past the final text for
the target's verdict: when a session re-opens, the client sends them as ordinary draft blocks
(``provisional_block``) and each verdict either confirms them or replaces the first one the target
disagrees with, retracting the rest. Listeners hear all of it as ``TextEvent`` s.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Callable, Collection, Sequence

from edgespec.core.block import DraftBlock
from edgespec.core.config import GenerationConfig
from edgespec.core.gamma import AdaptiveGamma
from edgespec.core.modes import Mode
from edgespec.core.stats import GenerationStats, TimelineEvent
from edgespec.core.stopping import FinishReason


class TextEventKind(StrEnum):
    FINAL = "final"
    PROVISIONAL = "provisional"
    RETRACT = "retract"


# Joins per-token payload slices (the draft's distributions) into one block payload: a driver's
# tensor concatenation; the core only slices and hands them over.
RowJoiner = Callable[[list[Any]], Any]


@dataclass(frozen=True)
class TextEvent:
    """One change to the streamed text; ``position`` indexes the generated tokens (prompt excluded).

    - ``final``: ``tokens`` at ``position`` are output (they may confirm provisional tokens shown
      there already). ``verified`` is False only for provisional tokens kept when the server never
      came back within the outage budget: the draft's, NOT the target's.
    - ``provisional``: the draft alone decided ``tokens`` (appended at ``position``) while the server
      was unreachable; they await the target's verdict.
    - ``retract``: every provisional token from ``position`` on is withdrawn; ``replaced_by`` is the
      target's token there (the ``final`` event that follows carries it), None when the text ended.

    Applying them in order: final: ``shown[position:position + n] = tokens``; provisional: append;
    retract: ``del shown[position:]``.
    """

    kind: TextEventKind
    position: int
    tokens: tuple[int, ...] = ()
    verified: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", TextEventKind(self.kind))

    @property
    def replaced_by(self) -> int | None:
        return self.tokens[0] if self.kind is TextEventKind.RETRACT and self.tokens else None


def apply_events(events: Sequence[TextEvent]) -> list[int]:
    """The text a stream of events leaves on screen (a reference for consumers and tests)."""
    shown: list[int] = []
    for event in events:
        if event.kind is TextEventKind.RETRACT:
            del shown[event.position :]
        else:
            if event.position > len(shown):
                raise ValueError(f"{event.kind} event at {event.position} past the text's end {len(shown)}")
            shown[event.position : event.position + len(event.tokens)] = event.tokens
    return shown


class Generation:
    """The committed text of one generation and its accounting. Drivers report what happened
    through its methods (``session_opened``, ``commit``, ``add_provisional``, ``finish``, ...);
    they read its fields but never set them.

    ``eos_ids``: the end-of-sequence ids the text stops at until a server says otherwise (default:
    the config's). ``join_rows``: how a driver joins the draft's per-token distributions of
    provisional tokens kept by several decode steps into one block's; without it such a block is
    drafted afresh (slower, never wrong).
    """

    def __init__(
        self,
        prompt_ids: Sequence[int],
        mode: Mode,
        config: GenerationConfig,
        eos_ids: Collection[int] | None = None,
        join_rows: RowJoiner | None = None,
    ) -> None:
        if not prompt_ids:
            raise ValueError("the prompt must contain at least one token")
        self.mode = mode
        self.config = config
        self.prompt_len = len(prompt_ids)
        self.committed = [int(t) for t in prompt_ids]
        self.stats = GenerationStats(mode=mode.value, prompt_tokens=len(prompt_ids))
        # The server's EOS set replaces this once a session opens; until then (and for edge-only)
        # the caller's decides.
        self.eos: frozenset[int] = frozenset(config.eos_ids if eos_ids is None else eos_ids)
        self.finished = False
        self.falling_back = False  # tokens are being decided by the draft alone
        self.gamma_policy: AdaptiveGamma | None = config.gamma_policy()
        # Draft-only tokens after the final text, awaiting the target (with the draft's
        # distribution for each when sampling: rejection sampling needs it).
        self.provisional: list[int] = []
        # Per provisional token: (the payload it was drafted with, its row there).
        self._provisional_probs: list[tuple[Any, int]] = []
        self._join_rows = join_rows
        self.provisional_end: FinishReason | None = None  # the provisional text reached EOS or the budget
        self.listener: Callable[[TextEvent], None] | None = None

    @property
    def produced(self) -> int:
        return len(self.committed) - self.prompt_len

    def budget(self, extra: int = 0) -> int:
        return self.config.max_new_tokens - self.produced - extra

    def gamma(self, extra: int = 0) -> int:
        """The next block's length: the policy's choice (or the fixed γ), within the budget left
        after ``extra`` more tokens (an assumed verdict's)."""
        chosen = self.gamma_policy.next_gamma() if self.gamma_policy else self.config.gamma
        return max(1, min(chosen, self.budget(extra)))

    def count_decode(self, compute_s: float) -> None:
        """cloud-ar: one decode the server ran (its tokens are committed as they arrive)."""
        self.stats.rounds += 1
        self.stats.target_passes += 1
        self.stats.server_verify_s += compute_s

    def count_cloud_round(self, drafted: int, accepted: int, draft_s: float, verify_s: float) -> None:
        """cloud-sd: one round the server drafted and verified itself. Its draft is server time:
        it counts in ``server_verify_s`` (the server's busy seconds) and, apart, in ``server_draft_s``."""
        stats = self.stats
        stats.rounds += 1
        stats.target_passes += 1
        stats.drafted += drafted
        stats.accepted += accepted
        stats.count_gamma(drafted)
        stats.server_verify_s += draft_s + verify_s
        stats.server_draft_s += draft_s

    def commit(self, tokens: list[int], at: float) -> None:
        """Final tokens (the target's verdict): they confirm provisional tokens up to the first
        disagreement, where the target's token replaces the draft's and the rest are retracted."""
        if tokens and self.stats.new_tokens == 0:
            self.stats.ttft_s = at
        position, stats = self.produced, self.stats
        agreed = 0
        while agreed < min(len(tokens), len(self.provisional)) and tokens[agreed] == self.provisional[agreed]:
            agreed += 1
        self.committed.extend(tokens)
        stats.new_tokens += len(tokens)
        stats.reverified += agreed
        if agreed < len(tokens) and agreed < len(self.provisional):
            # The listener sees the state after the whole verdict, so a raise there loses nothing.
            retracted = self._drop_provisional()
            if agreed:
                self._emit(TextEvent(TextEventKind.FINAL, position, tuple(tokens[:agreed])))
            self._emit(TextEvent(TextEventKind.RETRACT, position + agreed, (tokens[agreed],)))
            self._note_retraction(retracted - agreed)
            self._emit(TextEvent(TextEventKind.FINAL, position + agreed, tuple(tokens[agreed:])))
            return
        del self.provisional[:agreed], self._provisional_probs[:agreed]
        if not self.provisional:
            self.provisional_end = None
        if tokens:
            self._emit(TextEvent(TextEventKind.FINAL, position, tuple(tokens)))

    def listen(self, listener: Callable[[TextEvent], None]) -> None:
        """``listener`` hears every change to the text from now on, as ``TextEvent`` s."""
        self.listener = listener

    def fallback_started(self) -> None:
        """The server is unreachable: the draft alone decides (provisional) tokens until it answers."""
        self.falling_back = True

    def fallback_ended(self) -> None:
        self.falling_back = False

    def session_opened(self, eos_ids: Collection[int]) -> None:
        """A session with the server opened: its EOS set decides where the text ends from now on."""
        self.eos = frozenset(eos_ids)

    def add_provisional(self, tokens: list[int], probs: Any = None, end: FinishReason = FinishReason.GOING_ON) -> None:
        """Tokens the draft alone decided (``probs``: its distribution for each, one row per token,
        when sampling); ``end``: they end the provisional text (EOS or the budget)."""
        position = self.produced + len(self.provisional)
        self.provisional.extend(tokens)
        if probs is not None:
            self._provisional_probs.extend((probs, row) for row in range(len(tokens)))
        self.stats.provisional_tokens += len(tokens)
        if end:
            self.provisional_end = end
        if tokens:
            self._emit(TextEvent(TextEventKind.PROVISIONAL, position, tuple(tokens)))

    def provisional_ended(self, reason: FinishReason) -> None:
        """The provisional text can go no further (the budget is spent) without a new token."""
        self.provisional_end = reason

    def provisional_block(self, sequence: Sequence[int], gamma: int) -> DraftBlock | None:
        """The draft's own next ``gamma`` tokens after ``sequence`` when it already decided them
        as provisional tokens (``sequence`` must be the final text plus some of them), else None."""
        start = len(sequence) - len(self.committed)
        if not 0 <= start < len(self.provisional):
            return None
        if (
            list(sequence[: len(self.committed)]) != self.committed
            or list(sequence[len(self.committed) :]) != self.provisional[:start]
        ):
            return None
        tokens = self.provisional[start : start + gamma]
        if self.config.sampling.greedy:
            return DraftBlock(tokens=tokens)
        if len(self._provisional_probs) != len(self.provisional):
            return None  # no distributions kept: draft afresh
        probs = self._rows(self._provisional_probs[start : start + gamma])
        return None if probs is None else DraftBlock(tokens=tokens, probs=probs)

    def _rows(self, entries: list[tuple[Any, int]]) -> Any:
        """The payload rows of ``entries`` as one payload: a slice when they are consecutive rows
        of one payload, else the driver's join of the slices (None without a joiner)."""
        slices: list[tuple[Any, int, int]] = []
        for payload, row in entries:
            if slices and slices[-1][0] is payload and slices[-1][2] == row:
                slices[-1] = (payload, slices[-1][1], row + 1)
            else:
                slices.append((payload, row, row + 1))
        parts = [payload[begin:end] for payload, begin, end in slices]
        if len(parts) == 1:
            return parts[0]
        return self._join_rows(parts) if self._join_rows is not None else None

    def settle_provisional(self, at: float) -> None:
        """Give up on the target (it never came back): keep the provisional tokens as output,
        flagged as the draft's (``fallback_tokens``/``fallback_spans``, not lossless)."""
        tokens = list(self.provisional)
        if not tokens:
            return
        self._drop_provisional()
        position, stats = self.produced, self.stats
        if tokens and stats.new_tokens == 0:
            stats.ttft_s = at
        self.committed.extend(tokens)
        stats.new_tokens += len(tokens)
        stats.fallback_tokens += len(tokens)
        stats.fallback_spans.append((position, position + len(tokens)))
        self._emit(TextEvent(TextEventKind.FINAL, position, tuple(tokens), verified=False))

    def finish(self, reason: FinishReason) -> None:
        self.finished = True
        self.stats.finish_reason = FinishReason(reason)
        if self.provisional:
            # The target ended the text before the draft did: what the draft said past it goes.
            self._note_retraction(self._drop_provisional())
            self._emit(TextEvent(TextEventKind.RETRACT, self.produced))

    def _drop_provisional(self) -> int:
        count = len(self.provisional)
        self.provisional, self._provisional_probs, self.provisional_end = [], [], None
        return count

    def _note_retraction(self, tokens: int) -> None:
        self.stats.retractions += 1
        self.stats.retracted_tokens += tokens

    def _emit(self, event: TextEvent) -> None:
        if self.listener is not None:
            self.listener(event)

    def record(self, actor: str, what: str, start_s: float, end_s: float, round_index: int | None = None) -> None:
        index = self.stats.rounds if round_index is None else round_index
        self.stats.timeline.append(TimelineEvent(actor, what, start_s, end_s, index))

    @property
    def new_tokens(self) -> list[int]:
        return self.committed[self.prompt_len :]
