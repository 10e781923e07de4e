"""Network failures over real gRPC on loopback: a server killed mid-generation (and restarted on
the same port), a server gone for good, a server back after the client fell back, a link cut.
Committed text is never lost or duplicated: the chunks `on_commit` hears concatenate to exactly
the final tokens, and every token the target decided equals `generate`."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Callable, Iterator

import pytest
import torch

from edgespec.client.edge_client import ClientOptions, ConnectionLost, EdgeClient
from edgespec.client.recovery import RecoveryPolicy
from edgespec.core.config import GenerationConfig, GenerationResult, SamplingParams
from edgespec.core.modes import Mode
from edgespec.drivers.local_engine import LocalEngine
from edgespec.exits.heads import ExitHeads, ExitSpec
from edgespec.link import LinkEmulator, resolve_profile
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.cloud_draft import CloudDraft
from edgespec.server.servicer import VerifierService
from tests.support.freezable_relay import FreezableRelay
from tests.support.tiny_models import greedy_reference, qwen2_layer_skip_draft, qwen2_target, tiny_model

PROMPT = [3, 17, 42, 8, 9, 61]
NEW_TOKENS = 24

# Retry long enough to outlast every restart below, and never fall back unless a test asks to:
# a silent fallback would turn a failed reconnect into a passing length check.
PATIENT = RecoveryPolicy(retries=30, backoff_initial_s=0.05, backoff_max_s=0.3, outage_budget_s=15.0, fallback=False)


target_model = qwen2_target
draft_model = qwen2_layer_skip_draft


class HeldAfter:
    """Parks every forward after the first ``count`` (the prompt's prefill, then the forward
    that decides the first commit) until ``go`` is set. A test that stops its server from inside
    ``on_commit`` sets ``go`` once the server is dead, so the server cannot have decoded ahead of
    the kill: the kill always lands mid-generation, however fast the machine."""

    def __init__(self, count: int = 2) -> None:
        self.count, self.seen = count, 0
        self.go = threading.Event()

    def __call__(self, *_args: object) -> None:
        self.seen += 1
        if self.seen > self.count:
            self.go.wait(10)


def serve(port: int = 0, held: HeldAfter | None = None, forward_sleep_s: float = 0.0) -> RunningServer:
    """A server on a fresh copy of the target (a killed server's compute thread may still be
    finishing a forward on its own copy); ``forward_sleep_s`` slows each forward so a run lasts
    long enough for something to happen during it (a pace, not a synchronisation)."""
    model = tiny_model("qwen2", seed=0)
    if held is not None:
        model.model.layers[-1].register_forward_hook(held)
    if forward_sleep_s:
        model.model.layers[-1].register_forward_hook(lambda *args: time.sleep(forward_sleep_s))
    exits = ExitHeads([ExitSpec(2), ExitSpec(3)], model.config.hidden_size)
    service = VerifierService(
        TargetRuntime(model, exits), tokenizer=None, eos_ids=frozenset(), cloud_draft=CloudDraft(draft_model())
    )
    return RunningServer(service, ServerConfig(port=port))


def killable_server() -> tuple[RunningServer, Callable[[], None]]:
    """A server held after its first commit, and the action that kills it (then lets its
    compute thread finish the held forward, for nobody)."""
    held = HeldAfter()
    server = serve(held=held)

    def kill() -> None:
        server.stop(grace=None)
        held.go.set()

    return server, kill


class ReconnectAttempts(logging.Handler):
    """Counts the client's "reconnect attempt N" log records, so a test can wait for refused
    reconnects instead of sleeping through them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("reconnect attempt"):
            with self._changed:
                self.count += 1
                self._changed.notify_all()

    def wait_for(self, count: int, timeout_s: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.count >= count, timeout_s)

    @classmethod
    @contextlib.contextmanager
    def watching(cls) -> Iterator["ReconnectAttempts"]:
        handler, logger = cls(), logging.getLogger("edgespec")
        level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            yield handler
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)


def edge_client(port: int, policy: RecoveryPolicy = PATIENT, draft: torch.nn.Module | None = None) -> EdgeClient:
    options = ClientOptions(connect_timeout_s=5.0, read_timeout_s=10.0, recovery=policy)
    return EdgeClient(f"127.0.0.1:{port}", DraftRuntime(draft or draft_model()), options)


class Recorder:
    """An `on_commit` that keeps every chunk and runs an action once, after the first commit."""

    def __init__(self, action: object = None) -> None:
        self.chunks: list[list[int]] = []
        self.action = action
        self.tokens_at_action: int | None = None

    def __call__(self, tokens: list[int]) -> None:
        self.chunks.append(list(tokens))
        if self.action is not None and self.tokens_at_action is None:
            self.tokens_at_action = len(self.streamed)
            self.action()  # type: ignore[operator]

    @property
    def streamed(self) -> list[int]:
        return [token for chunk in self.chunks for token in chunk]


def assert_streamed_exactly(result: GenerationResult, recorder: Recorder) -> None:
    assert recorder.streamed == result.tokens, "on_commit chunks lost or duplicated a token"


@pytest.mark.parametrize("mode", [Mode.CLOUD_AR, Mode.SD, Mode.SD_EE_PIPELINED, Mode.CLOUD_SD], ids=lambda m: m.value)
def test_a_server_killed_and_restarted_mid_generation_changes_nothing(mode: Mode) -> None:
    expected = greedy_reference(target_model(), PROMPT, NEW_TOKENS)
    first, kill_first = killable_server()
    servers = [first]
    port = first.port
    restarted_after_refusals: list[bool] = []

    def restart_after_refused_reconnects(attempts: ReconnectAttempts) -> None:
        # "attempt 1" is announced when the loss is seen; 2 and 3 after two refused reconnects.
        restarted_after_refusals.append(attempts.wait_for(3, timeout_s=10))
        servers.append(serve(port))

    with ReconnectAttempts.watching() as attempts:

        def kill() -> None:
            kill_first()
            threading.Thread(target=restart_after_refused_reconnects, args=(attempts,), daemon=True).start()

        recorder = Recorder(kill)
        try:
            result = edge_client(port).generate(
                PROMPT, mode, GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=3), recorder
            )
        finally:
            for server in servers:
                server.stop()
    assert restarted_after_refusals == [True], "the server came back before two reconnects were refused"
    assert recorder.tokens_at_action is not None and recorder.tokens_at_action < NEW_TOKENS
    assert result.tokens == expected
    assert_streamed_exactly(result, recorder)
    assert result.stats.connection_losses == 1 and result.stats.reconnects == 1
    assert result.stats.fallbacks == 0 and result.stats.lossless


@pytest.mark.parametrize("mode", [Mode.CLOUD_AR, Mode.SD_EE_PIPELINED], ids=lambda m: m.value)
def test_a_resumed_sampled_generation_is_the_uninterrupted_one(mode: Mode) -> None:
    """The target's uniforms are keyed by (seed, position), so re-opening after a crash redraws
    nothing differently: the same sample as the in-process engine without any outage."""
    config = GenerationConfig(
        max_new_tokens=NEW_TOKENS, gamma=3, sampling=SamplingParams(temperature=0.9, top_k=30), seed=11
    )
    local = LocalEngine(TargetRuntime(target_model()), DraftRuntime(draft_model()))
    expected = local.generate(PROMPT, Mode.CLOUD_AR if mode is Mode.CLOUD_AR else Mode.SD, config).tokens
    first, kill_first = killable_server()
    servers = [first]
    port = first.port

    def crash_and_restart() -> None:
        kill_first()
        servers.append(serve(port))

    recorder = Recorder(crash_and_restart)
    try:
        result = edge_client(port).generate(PROMPT, mode, config, recorder)
    finally:
        for server in servers:
            server.stop()
    assert recorder.tokens_at_action is not None and recorder.tokens_at_action < NEW_TOKENS
    assert result.tokens == expected
    assert_streamed_exactly(result, recorder)
    assert result.stats.reconnects == 1


def test_a_server_gone_for_good_ends_edge_only_with_the_committed_prefix_intact() -> None:
    server, kill = killable_server()
    policy = RecoveryPolicy(retries=2, backoff_initial_s=0.05, outage_budget_s=1.0, fallback=True, probe_interval_s=0.2)
    recorder = Recorder(kill)
    result = edge_client(server.port, policy).generate(
        PROMPT, Mode.SD, GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=3), recorder
    )
    cut = recorder.tokens_at_action
    assert cut is not None and 0 < cut < NEW_TOKENS
    assert len(result.tokens) == NEW_TOKENS
    assert_streamed_exactly(result, recorder)
    assert result.tokens[:cut] == greedy_reference(target_model(), PROMPT, cut)
    # Past the cut the draft alone decided: its own greedy continuation of the committed text.
    assert result.tokens[cut:] == greedy_reference(draft_model(), PROMPT + result.tokens[:cut], NEW_TOKENS - cut)
    stats = result.stats
    assert stats.fallbacks == 1 and stats.switchbacks == 0 and stats.reconnects == 0
    assert stats.fallback_tokens == NEW_TOKENS - cut and stats.fallback_spans == [(cut, NEW_TOKENS)]
    assert stats.provisional_tokens == NEW_TOKENS - cut and stats.reverified == 0 and stats.retractions == 0
    assert not stats.lossless
    assert any(event.what.startswith("fallback") for event in stats.timeline)


def test_without_fallback_a_server_gone_for_good_raises_with_every_committed_token() -> None:
    server, kill = killable_server()
    # Without provisional text the client keeps trying for the whole outage budget, then raises.
    policy = RecoveryPolicy(
        retries=2, backoff_initial_s=0.05, fallback=False, outage_budget_s=1.0, probe_interval_s=0.2
    )
    recorder = Recorder(kill)
    started = time.monotonic()
    with pytest.raises(ConnectionLost, match=r"\d+ reconnect attempts") as lost:
        edge_client(server.port, policy).generate(
            PROMPT, Mode.SD, GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=3), recorder
        )
    assert time.monotonic() - started >= 0.8, "gave up before the outage budget was spent"
    partial = lost.value.partial
    assert partial.tokens == recorder.streamed and len(partial.tokens) == recorder.tokens_at_action
    assert partial.tokens == greedy_reference(target_model(), PROMPT, len(partial.tokens))
    assert partial.stats.connection_losses == 1 and partial.stats.fallbacks == 0


def test_a_link_cut_mid_generation_is_redone_over_the_restored_link() -> None:
    expected = greedy_reference(target_model(), PROMPT, NEW_TOKENS)
    server = serve()
    profile = resolve_profile("lan", {"one_way_delay_ms": 5.0})
    links = [LinkEmulator("127.0.0.1", server.port, profile)]
    port = links[0].run_in_thread()

    def cut() -> None:
        links[0].stop_thread()  # drops every open connection: in-flight bytes are lost
        links.append(LinkEmulator("127.0.0.1", server.port, profile, listen_port=port))
        links[-1].run_in_thread()

    recorder = Recorder(cut)
    try:
        result = edge_client(port).generate(
            PROMPT, Mode.SD_EE_PREDRAFT, GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=3), recorder
        )
    finally:
        links[-1].stop_thread()
        server.stop()
    assert recorder.tokens_at_action is not None and recorder.tokens_at_action < NEW_TOKENS
    assert result.tokens == expected
    assert_streamed_exactly(result, recorder)
    assert result.stats.reconnects == 1 and result.stats.lossless


def test_a_link_that_goes_silent_is_found_dead_by_keepalive_and_the_round_redone() -> None:
    """No reset ever arrives and the read deadline is far off: only unanswered keepalive pings
    can tell the link is dead."""
    expected = greedy_reference(target_model(), PROMPT, NEW_TOKENS)
    server = serve()
    relay = FreezableRelay(server.port)
    options = ClientOptions(read_timeout_s=60.0, keepalive_s=1.0, keepalive_timeout_s=1.0, recovery=PATIENT)
    recorder = Recorder(relay.freeze_open_connections)
    started = time.monotonic()
    try:
        with relay.running() as port:
            client = EdgeClient(f"127.0.0.1:{port}", DraftRuntime(draft_model()), options)
            result = client.generate(PROMPT, Mode.SD, GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=3), recorder)
    finally:
        server.stop()
    assert time.monotonic() - started < 15.0, "the dead link was found by the read deadline, not keepalive"
    assert recorder.tokens_at_action is not None and recorder.tokens_at_action < NEW_TOKENS
    assert result.tokens == expected
    assert_streamed_exactly(result, recorder)
    assert result.stats.reconnects == 1
