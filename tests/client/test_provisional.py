"""Provisional tokens over real gRPC on loopback: the server is killed mid-generation, the draft
alone goes on with provisional tokens, the server comes back on the same port and the target
re-verifies them as draft blocks. The final text is the uninterrupted run's (greedy: the target's
own `generate`; seeded sampling: the in-process engine without any outage), retractions happen
exactly where the target disagreed with the draft, and the streamed events, applied in order,
give the final text."""

from __future__ import annotations

import threading
import time

import pytest

from edgespec.client.recovery import RecoveryPolicy
from edgespec.core.config import GenerationConfig, GenerationResult, SamplingParams
from edgespec.core.generation import TextEvent, apply_events
from edgespec.core.modes import Mode
from edgespec.drivers.local_engine import LocalEngine
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from tests.client.test_recovery import PROMPT, draft_model, edge_client, serve, target_model
from tests.support.tiny_models import greedy_reference, tiny_model

NEW_TOKENS = 24
# Fall back at once (no quick retries) and probe often, so the restart lands mid-outage.
PROVISIONAL = RecoveryPolicy(retries=0, outage_budget_s=20.0, fallback=True, probe_interval_s=0.1)
SAMPLED = SamplingParams(temperature=0.9, top_k=30)


class EventLog:
    """An `on_event` that kills the server at the first final tokens and starts it again (on
    the same port, from another thread) once ``restart_after`` provisional tokens were shown."""

    def __init__(self, restart_after: int | None) -> None:
        self.events: list[TextEvent] = []
        self.servers = [serve()]
        self.port = self.servers[0].port
        self.restart_after = restart_after
        self.killed_after: int | None = None  # final tokens when the server was killed
        self.restarted = threading.Event()
        self._restarting = False

    def __call__(self, event: TextEvent) -> None:
        self.events.append(event)
        if event.kind == "final" and self.killed_after is None:
            self.killed_after = event.position + len(event.tokens)
            self.servers[0].stop(grace=None)
        provisional = sum(len(e.tokens) for e in self.events if e.kind == "provisional")
        if self.restart_after is not None and not self._restarting and provisional >= self.restart_after:
            self._restarting = True
            threading.Thread(target=self._restart, daemon=True).start()

    def _restart(self) -> None:
        self.servers.append(serve(self.port))
        self.restarted.set()

    def stop(self) -> None:
        if self._restarting:
            self.restarted.wait(30)
        for server in self.servers:
            server.stop()

    def shown_provisional(self) -> list[int]:
        """Every provisional token as it was shown, by position (the latest one wins)."""
        shown: dict[int, int] = {}
        for event in self.events:
            if event.kind == "provisional":
                shown.update({event.position + i: t for i, t in enumerate(event.tokens)})
        return [shown[p] for p in sorted(shown)]


def check_events(result: GenerationResult, log: EventLog) -> None:
    """The events replay to the final text; each retraction sits where the shown provisional text
    first disagrees with the final one; final events carry every token exactly once."""
    assert apply_events(log.events) == result.tokens
    finals = [t for e in log.events if e.kind == "final" for t in e.tokens]
    assert finals == result.tokens, "final events lost or duplicated a token"
    shown: list[int] = []
    provisional_from: int | None = None
    for index, event in enumerate(log.events):
        if event.kind == "retract":
            assert provisional_from is not None and event.position >= provisional_from
            # The tokens before the retraction were confirmed; the one at it was the target's choice.
            if event.replaced_by is not None:
                assert shown[event.position] != event.replaced_by == result.tokens[event.position]
            assert shown[provisional_from : event.position] == result.tokens[provisional_from : event.position]
            provisional_from = None
        elif event.kind == "provisional" and provisional_from is None:
            provisional_from = event.position
        shown = apply_events(log.events[: index + 1])
    stats = result.stats
    assert stats.provisional_tokens == len(log.shown_provisional()) > 0
    assert stats.retractions == sum(e.kind == "retract" for e in log.events)


def expected_tokens(mode: Mode, config: GenerationConfig) -> list[int]:
    if config.sampling.greedy:
        return greedy_reference(target_model(), PROMPT, config.max_new_tokens)
    local = LocalEngine(TargetRuntime(target_model()), DraftRuntime(draft_model()))
    return local.generate(PROMPT, Mode.CLOUD_AR if mode is Mode.CLOUD_AR else Mode.SD, config).tokens


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
@pytest.mark.parametrize(
    "mode", [Mode.SD, Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED, Mode.CLOUD_AR], ids=lambda m: m.value
)
def test_provisional_tokens_are_reverified_after_a_restart_and_the_text_is_the_uninterrupted_one(
    mode: Mode, sampled: bool
) -> None:
    config = GenerationConfig(
        max_new_tokens=NEW_TOKENS, gamma=3, sampling=SAMPLED if sampled else SamplingParams(), seed=11
    )
    expected = expected_tokens(mode, config)
    log = EventLog(restart_after=5)
    commits: list[list[int]] = []
    try:
        result = edge_client(log.port, PROVISIONAL).generate(PROMPT, mode, config, commits.append, log)
    finally:
        log.stop()
    assert log.killed_after is not None and log.killed_after < NEW_TOKENS
    assert result.tokens == expected
    assert [t for chunk in commits for t in chunk] == result.tokens, "on_commit hears final tokens, each once"
    check_events(result, log)
    stats = result.stats
    assert stats.lossless and stats.fallback_tokens == 0 and stats.fallback_spans == []
    assert stats.fallbacks == 1 and stats.switchbacks == 1
    # Every provisional token was either confirmed or withdrawn (the text may end before them).
    assert stats.reverified + stats.retracted_tokens == stats.provisional_tokens


def test_a_server_gone_for_good_leaves_the_provisional_tokens_flagged_and_the_prefix_intact() -> None:
    log = EventLog(restart_after=None)
    policy = RecoveryPolicy(retries=0, outage_budget_s=1.0, fallback=True, probe_interval_s=0.2)
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=3)
    commits: list[list[int]] = []
    started = time.monotonic()
    try:
        result = edge_client(log.port, policy).generate(PROMPT, Mode.SD_EE_PIPELINED, config, commits.append, log)
    finally:
        log.stop()
    cut = log.killed_after
    assert cut is not None and 0 < cut < NEW_TOKENS
    assert time.monotonic() - started >= 0.9, "gave up on the server before the outage budget was spent"
    assert result.tokens[:cut] == greedy_reference(target_model(), PROMPT, cut)
    assert result.tokens[cut:] == greedy_reference(draft_model(), PROMPT + result.tokens[:cut], NEW_TOKENS - cut)
    assert apply_events(log.events) == result.tokens
    # Shown as provisional first, then kept, flagged as never verified: never retracted.
    assert log.shown_provisional() == result.tokens[cut:]
    [kept] = [e for e in log.events if e.kind == "final" and not e.verified]
    assert (kept.position, list(kept.tokens)) == (cut, result.tokens[cut:])
    assert [t for chunk in commits for t in chunk] == result.tokens
    stats = result.stats
    assert not stats.lossless and stats.fallback_spans == [(cut, NEW_TOKENS)] and stats.retractions == 0


@pytest.mark.parametrize("mode", [Mode.SD, Mode.SD_EE_PIPELINED], ids=lambda m: m.value)
def test_provisional_tokens_the_target_agrees_with_all_become_final_block_by_block(mode: Mode) -> None:
    """A greedy draft that is the target itself: every provisional token is confirmed, none
    retracted, and they reach the server as several blocks (not re-drafted). (Sampling would
    retract at bonus positions: the target samples the bonus with its own uniform.)"""
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=3)
    agreeing = tiny_model("qwen2", seed=0)
    expected = (
        LocalEngine(TargetRuntime(target_model()), DraftRuntime(agreeing)).generate(PROMPT, Mode.SD, config).tokens
    )
    log = EventLog(restart_after=9)
    try:
        result = edge_client(log.port, PROVISIONAL, agreeing).generate(PROMPT, mode, config, None, log)
    finally:
        log.stop()
    assert result.tokens == expected
    check_events(result, log)
    stats = result.stats
    assert stats.provisional_tokens >= 9 and stats.reverified == stats.provisional_tokens
    assert stats.retractions == 0 and stats.lossless


def test_stream_with_events_yields_text_events_and_without_them_final_tokens() -> None:
    server = serve()
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=3)
    try:
        client = edge_client(server.port)
        events = list(client.stream(PROMPT, Mode.SD, config, events=True))
        chunks = list(client.stream(PROMPT, Mode.SD, config))
    finally:
        server.stop()
    expected = greedy_reference(target_model(), PROMPT, NEW_TOKENS)
    assert all(isinstance(event, TextEvent) and event.kind == "final" for event in events)
    assert apply_events(events) == expected == [t for chunk in chunks for t in chunk]
