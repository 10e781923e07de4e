"""Over real gRPC on loopback, through the link emulator with a real delay: every lossless
mode's greedy output equals `generate`; pre-draft hits and misses both happen and stay
lossless; a seeded sampled generation is the same over the network as in process."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from edgespec.client.edge_client import ClientOptions, ConnectionLost, EdgeClient
from edgespec.client.recovery import NO_RECOVERY
from edgespec.core.config import GenerationConfig, SamplingParams
from edgespec.core.modes import Mode
from edgespec.drivers.local_engine import LocalEngine
from edgespec.exits.heads import ExitHeads, ExitSpec
from edgespec.link import LinkEmulator, resolve_profile
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.servicer import VerifierService
from tests.support.tiny_models import greedy_reference, layer_skip_copy, tiny_model
from tests.support.watched_server import FirstVerifyHold, WatchedService

PROMPT = [3, 17, 42, 8, 9, 61]
NEW_TOKENS = 24
NETWORK_MODES = [Mode.CLOUD_AR, Mode.SD, Mode.SD_EE, Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED]


@lru_cache(maxsize=None)
def target_model() -> torch.nn.Module:
    return tiny_model("qwen2", seed=0)


@lru_cache(maxsize=None)
def layer_skip_draft() -> torch.nn.Module:
    return layer_skip_copy(tiny_model("qwen2", seed=0), keep=3)


def exits(layers: tuple[int, ...]) -> ExitHeads:
    return ExitHeads([ExitSpec(layer) for layer in layers], target_model().config.hidden_size)


@pytest.fixture(scope="module")
def served():
    """A server with logit-lens exits at layers 2 and 3, behind a link with 5 ms one-way delay."""
    service = VerifierService(
        TargetRuntime(tiny_model("qwen2", seed=0), exits((2, 3))), tokenizer=None, eos_ids=frozenset()
    )
    server = RunningServer(service, ServerConfig(port=0))
    link = LinkEmulator("127.0.0.1", server.port, resolve_profile("lan", {"one_way_delay_ms": 5.0}))
    with link.running() as port:
        yield f"127.0.0.1:{port}", server
    server.stop()


def client(address: str) -> EdgeClient:
    return EdgeClient(address, DraftRuntime(layer_skip_draft()))


@pytest.mark.parametrize("mode", NETWORK_MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("gamma", [1, 4, 7])
def test_every_network_mode_equals_generate(served, mode: Mode, gamma: int) -> None:
    address, _ = served
    expected = greedy_reference(target_model(), PROMPT, NEW_TOKENS)
    result = client(address).generate(
        PROMPT, mode, GenerationConfig(early_verdicts=True, max_new_tokens=NEW_TOKENS, gamma=gamma)
    )
    assert result.tokens == expected
    assert result.stats.bytes_sent > 0 and result.stats.bytes_received > 0


def test_predraft_hits_and_misses_both_happen_and_stay_lossless(served) -> None:
    address, _ = served
    expected = greedy_reference(target_model(), PROMPT, 40)
    for mode in (Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED):
        result = client(address).generate(
            PROMPT, mode, GenerationConfig(early_verdicts=True, max_new_tokens=40, gamma=3)
        )
        assert result.tokens == expected
        if mode is Mode.SD_EE_PREDRAFT:  # which hint a pipelined round bets on depends on timing
            assert result.stats.hits > 0, "no pre-draft hit"
            assert result.stats.misses > 0, "no pre-draft miss"


@pytest.mark.parametrize("mode", [Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED], ids=lambda m: m.value)
@pytest.mark.parametrize("draft_stop", [0.0, 0.3])
def test_runner_up_branches_and_a_draft_stop_stay_lossless_over_the_network(
    served, mode: Mode, draft_stop: float
) -> None:
    address, _ = served
    config = GenerationConfig(max_new_tokens=40, gamma=4, runner_up=True, branches=3, draft_stop=draft_stop)
    result = client(address).generate(PROMPT, mode, config)
    assert result.tokens == greedy_reference(target_model(), PROMPT, 40)
    assert set(result.stats.hits_by_source) <= {"guess", "runner-up", "runner-up 2"}
    assert result.stats.branches > 0


def serve_watched(
    exit_layers: tuple[int, ...], model: torch.nn.Module | None = None
) -> tuple[RunningServer, WatchedService, FirstVerifyHold]:
    """A server whose round-0 verify can be held after the last layer (the exits have spoken,
    the final verdict is not out) until the client's tagged pre-draft for round 1 arrives: like
    a big target whose late layers outlast a pre-draft, without betting on timing."""
    model = model or tiny_model("qwen2", seed=0)
    hold = FirstVerifyHold(model)
    service = WatchedService(TargetRuntime(model, exits(exit_layers)), tokenizer=None, eos_ids=frozenset())
    return RunningServer(service, ServerConfig(port=0)), service, hold


def test_a_perfect_exit_makes_every_round_a_hit_and_pipelines() -> None:
    """Zeroing the last layer's output projections makes it pass the residual through, so the
    logit lens after layer 3 *is* the final layer: every early verdict is right."""
    model = tiny_model("qwen2", seed=0)
    with torch.no_grad():
        model.model.layers[-1].self_attn.o_proj.weight.zero_()
        model.model.layers[-1].mlp.down_proj.weight.zero_()
    expected = greedy_reference(model, PROMPT, NEW_TOKENS)
    server, service, hold = serve_watched((3,), model)
    try:
        for mode in (Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED):
            if mode is Mode.SD_EE_PIPELINED:
                hold.arm(service)
            stats = client(f"127.0.0.1:{server.port}").generate(
                PROMPT, mode, GenerationConfig(early_verdicts=True, max_new_tokens=NEW_TOKENS, gamma=3)
            )
            assert stats.tokens == expected
            # Every round a hit, but the last (its assumed verdict fills the budget: no pre-draft).
            assert stats.stats.hits >= stats.stats.rounds - 1 and stats.stats.misses == 0
            if mode is Mode.SD_EE_PIPELINED:
                assert hold.released_by_predraft, "round 1's tagged pre-draft never reached the server"
                assert stats.stats.pipelined > 0, "no round was verified straight from a pipelined pre-draft"
                # Only wrong guess branches are dropped; every shipped branch is verified or dropped.
                assert stats.stats.pipelined + stats.stats.dropped <= stats.stats.branches_shipped
    finally:
        server.stop()


def test_a_deliberately_poor_exit_forces_misses_and_stays_lossless() -> None:
    """An exit after layer 1 of 4 is mostly wrong: pipelined pre-drafts get dropped."""
    server, service, hold = serve_watched((1,))
    hold.arm(service)
    try:
        expected = greedy_reference(target_model(), PROMPT, NEW_TOKENS)
        result = client(f"127.0.0.1:{server.port}").generate(
            PROMPT, Mode.SD_EE_PIPELINED, GenerationConfig(early_verdicts=True, max_new_tokens=NEW_TOKENS, gamma=3)
        )
        assert result.tokens == expected
        assert hold.released_by_predraft, "round 1's tagged pre-draft never reached the server"
        assert result.stats.misses > result.stats.hits
        assert result.stats.dropped > 0
    finally:
        server.stop()


@pytest.mark.parametrize(
    "mode", [Mode.CLOUD_AR, Mode.SD, Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED], ids=lambda m: m.value
)
def test_seeded_sampling_is_identical_over_the_network_and_in_process(served, mode: Mode) -> None:
    address, _ = served
    config = GenerationConfig(
        early_verdicts=True,
        max_new_tokens=NEW_TOKENS,
        gamma=3,
        sampling=SamplingParams(temperature=0.9, top_k=30),
        seed=5,
    )
    local = LocalEngine(TargetRuntime(target_model()), DraftRuntime(layer_skip_draft()))
    in_process_mode = Mode.CLOUD_AR if mode is Mode.CLOUD_AR else Mode.SD
    expected = local.generate(PROMPT, in_process_mode, config).tokens
    assert client(address).generate(PROMPT, mode, config).tokens == expected


def test_streaming_yields_the_same_tokens_round_by_round(served) -> None:
    address, _ = served
    chunks = list(
        client(address).stream(
            PROMPT, Mode.SD_EE_PIPELINED, GenerationConfig(early_verdicts=True, max_new_tokens=NEW_TOKENS, gamma=4)
        )
    )
    assert len(chunks) > 1
    assert [t for chunk in chunks for t in chunk] == greedy_reference(target_model(), PROMPT, NEW_TOKENS)


def test_a_server_killed_mid_generation_returns_what_was_committed_without_recovery() -> None:
    service = VerifierService(TargetRuntime(target_model(), exits((2,))), tokenizer=None, eos_ids=frozenset())
    server = RunningServer(service, ServerConfig(port=0))
    seen: list[int] = []

    def kill_after_some(tokens: list[int]) -> None:
        seen.extend(tokens)
        if len(seen) >= 6 and server.port:
            server.stop()

    no_recovery = EdgeClient(
        f"127.0.0.1:{server.port}", DraftRuntime(layer_skip_draft()), ClientOptions(recovery=NO_RECOVERY)
    )
    with pytest.raises(ConnectionLost) as lost:
        no_recovery.generate(
            PROMPT,
            Mode.SD,
            GenerationConfig(early_verdicts=True, max_new_tokens=200, gamma=2),
            on_commit=kill_after_some,
        )
    partial = lost.value.partial
    assert "lost the server" in str(lost.value)
    assert partial.tokens == seen and len(seen) >= 6
    assert partial.tokens == greedy_reference(target_model(), PROMPT, len(seen))


@pytest.mark.parametrize("mode", [Mode.SD, Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED], ids=lambda m: m.value)
def test_adaptive_gamma_stays_lossless_over_the_network_and_in_process(served, mode: Mode) -> None:
    address, _ = served
    expected = greedy_reference(target_model(), PROMPT, 40)
    config = GenerationConfig(early_verdicts=True, max_new_tokens=40, gamma=2, adaptive_gamma=True, max_gamma=6)
    result = client(address).generate(PROMPT, mode, config)
    assert result.tokens == expected
    assert sum(result.stats.gamma_counts.values()) == result.stats.rounds
    assert max(int(g) for g in result.stats.gamma_counts) <= 6
    local = LocalEngine(TargetRuntime(tiny_model("qwen2", seed=0)), DraftRuntime(layer_skip_draft())).generate(
        PROMPT, Mode.SD, config
    )
    assert local.tokens == expected
