"""cloud-sd, the co-located baseline (the server drafts and verifies, the client only receives):
greedy output equals `transformers` `generate` (fp32) in process and over gRPC with the real
server; the client needs no draft; a server without a draft refuses cloud-sd clearly; sampling
runs and keeps the target's distribution over the real client/server path."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from edgespec.client.edge_client import EdgeClient
from edgespec.client.stream import ServerError
from edgespec.core.config import GenerationConfig, SamplingParams
from edgespec.core.modes import Mode
from edgespec.drivers.local_engine import LocalEngine
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.cloud_draft import CloudDraft
from edgespec.server.servicer import VerifierService
from tests.support.tiny_models import greedy_reference, layer_skip_copy, tiny_model

PROMPT = [3, 17, 42, 8, 9, 61]
NEW_TOKENS = 24


@lru_cache(maxsize=None)
def target_model() -> torch.nn.Module:
    return tiny_model("qwen2", seed=0)


@lru_cache(maxsize=None)
def draft_model(kind: str) -> torch.nn.Module:
    if kind == "layer-skip":  # agrees with the target part of the time: accepts and rejections both
        return layer_skip_copy(tiny_model("qwen2", seed=0), keep=3)
    return tiny_model("qwen2", seed=99)  # "random": rejected almost always


@lru_cache(maxsize=None)
def reference(new_tokens: int = NEW_TOKENS) -> tuple[int, ...]:
    return tuple(greedy_reference(target_model(), PROMPT, new_tokens))


@pytest.mark.parametrize("draft", ["layer-skip", "random"])
@pytest.mark.parametrize("gamma", [1, 4, 7])
def test_cloud_sd_in_process_equals_generate(draft: str, gamma: int) -> None:
    engine = LocalEngine(TargetRuntime(target_model()), DraftRuntime(draft_model(draft)))
    result = engine.generate(PROMPT, Mode.CLOUD_SD, GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=gamma))
    assert tuple(result.tokens) == reference()
    stats = result.stats
    assert stats.rounds >= 1 and stats.target_passes == stats.rounds
    assert stats.drafted >= stats.rounds and stats.draft_s == 0.0, "the edge drafted nothing: the server did"
    assert 0 < stats.server_draft_s < stats.server_verify_s
    if draft == "layer-skip":
        assert 0 < stats.accepted < stats.drafted


def test_cloud_sd_in_process_adaptive_gamma_equals_generate() -> None:
    engine = LocalEngine(TargetRuntime(target_model()), DraftRuntime(draft_model("layer-skip")))
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=2, adaptive_gamma=True, max_gamma=6)
    assert tuple(engine.generate(PROMPT, Mode.CLOUD_SD, config).tokens) == reference()


def test_cloud_sd_in_process_needs_a_draft() -> None:
    with pytest.raises(ValueError, match="cloud-sd needs a draft model"):
        LocalEngine(TargetRuntime(target_model())).generate(PROMPT, Mode.CLOUD_SD, GenerationConfig(max_new_tokens=4))


def test_the_client_needs_no_draft_for_cloud_sd() -> None:
    assert not Mode.CLOUD_SD.uses_draft and Mode.CLOUD_SD.server_drafts and not Mode.CLOUD_SD.edge_rounds


# ---------------------------------------------------------------- over gRPC, the real server


@pytest.fixture(scope="module")
def served():
    """One server with a cloud draft (the layer-skip model), one without."""
    with_draft = RunningServer(
        VerifierService(
            TargetRuntime(target_model()),
            tokenizer=None,
            eos_ids=frozenset(),
            cloud_draft=CloudDraft(draft_model("layer-skip")),
        ),
        ServerConfig(port=0),
    )
    without = RunningServer(
        VerifierService(TargetRuntime(target_model()), tokenizer=None, eos_ids=frozenset()), ServerConfig(port=0)
    )
    yield f"127.0.0.1:{with_draft.port}", f"127.0.0.1:{without.port}"
    with_draft.stop()
    without.stop()


@pytest.mark.parametrize("gamma", [1, 4, 7])
def test_cloud_sd_over_grpc_equals_generate_with_no_draft_on_the_client(served, gamma: int) -> None:
    address, _ = served
    result = EdgeClient(address, draft=None).generate(
        PROMPT, Mode.CLOUD_SD, GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=gamma)
    )
    assert tuple(result.tokens) == reference()
    stats = result.stats
    assert stats.rounds >= NEW_TOKENS // (gamma + 1) and stats.target_passes == stats.rounds
    assert 0 < stats.accepted < stats.drafted and stats.draft_s == 0.0
    assert 0 < stats.server_draft_s < stats.server_verify_s and stats.finish_reason == "length"
    # The server's drafting is on the timeline as server time, so capacity counts it as busy.
    drafting = [e for e in stats.timeline if e.actor == "cloud" and e.what == "draft (server)"]
    assert len(drafting) == stats.rounds
    assert sum(e.end_s - e.start_s for e in drafting) == pytest.approx(stats.server_draft_s, rel=1e-6)


def test_cloud_sd_over_grpc_stops_its_drafts_as_the_edge_does(served) -> None:
    """The server's draft takes the client's --draft-stop: its rounds are sd's with the same
    draft and stop, so the co-located baseline drafts by the same rule as the edge."""
    address, _ = served
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=6, draft_stop=0.1)
    cloud = EdgeClient(address).generate(PROMPT, Mode.CLOUD_SD, config)
    edge = EdgeClient(address, DraftRuntime(draft_model("layer-skip"))).generate(PROMPT, Mode.SD, config)
    assert tuple(cloud.tokens) == tuple(edge.tokens) == reference()
    assert (cloud.stats.rounds, cloud.stats.drafted, cloud.stats.accepted) == (
        edge.stats.rounds,
        edge.stats.drafted,
        edge.stats.accepted,
    )
    full = EdgeClient(address).generate(
        PROMPT, Mode.CLOUD_SD, GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=6, draft_stop=0.0)
    )
    assert cloud.stats.drafted < full.stats.drafted  # some blocks ended early


def test_cloud_sd_over_grpc_adaptive_gamma_and_sessions_in_parallel(served) -> None:
    address, _ = served
    configs = [
        GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=2, adaptive_gamma=True, max_gamma=6),
        GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=5),
    ]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda c: EdgeClient(address).generate(PROMPT, Mode.CLOUD_SD, c), configs))
    assert [tuple(r.tokens) for r in results] == [reference(), reference()]


def test_cloud_sd_from_a_server_without_a_draft_is_a_clear_error(served) -> None:
    _, address = served
    with pytest.raises(ServerError, match="--cloud-draft") as caught:
        EdgeClient(address).generate(PROMPT, Mode.CLOUD_SD, GenerationConfig(max_new_tokens=4))
    assert caught.value.code == "BAD_REQUEST"
    # The server is unharmed: cloud-ar on it still equals generate.
    assert (
        tuple(EdgeClient(address).generate(PROMPT, Mode.CLOUD_AR, GenerationConfig(max_new_tokens=NEW_TOKENS)).tokens)
        == reference()
    )


def test_cloud_sd_sampling_is_sd_sampling_moved_to_the_server(served) -> None:
    """Same seed, draft model and γ: the server's draft draws what the edge's would (the same
    seed offset) and the verifier the same position-keyed uniforms, so cloud-sd's sample is sd's,
    token for token (sd's distribution is tested in test_network_sampling_distribution.py)."""
    address, _ = served
    sampling = SamplingParams(temperature=1.0)
    for seed in range(4):
        config = GenerationConfig(max_new_tokens=16, gamma=3, sampling=sampling, seed=seed)
        cloud = EdgeClient(address).generate(PROMPT, Mode.CLOUD_SD, config)
        edge = EdgeClient(address, DraftRuntime(draft_model("layer-skip"))).generate(PROMPT, Mode.SD, config)
        assert cloud.tokens == edge.tokens and len(cloud.tokens) == 16
        assert cloud.stats.accepted == edge.stats.accepted


def test_sessions_waiting_to_draft_are_drafted_together_as_each_would_alone() -> None:
    import gc

    cloud = CloudDraft(draft_model("layer-skip"))
    sequences = [PROMPT, PROMPT[:3] + [5, 6], [7, 8, 9, 10, 11, 12, 13, 14]]
    drafters = [cloud.session(SamplingParams(), seed=0) for _ in sequences]
    requests = [cloud.enqueue(d, s, gamma) for d, s, gamma in zip(drafters, sequences, (4, 2, 5))]
    first = cloud.draft_queued(requests[0])
    # One pass per step, over the sessions still drafting (γ 4, 2, 5): 3, 3, 2, 2, then the last alone.
    assert [r.batch_size for r in requests] == [3, 3, 3] and dict(cloud.runtime.batch_sizes) == {3: 2, 2: 2, 1: 1}
    for request, sequence in zip(requests, sequences):
        alone = DraftRuntime(draft_model("layer-skip")).draft(sequence, request.gamma, SamplingParams())
        assert cloud.draft_queued(request).tokens == alone.tokens  # the later jobs find their blocks drafted
    assert first is requests[0].block
    # With a confidence stop each session's block ends where its draft alone would end it.
    stopped = [cloud.enqueue(d, s, 6, stop_below=0.1) for d, s in zip(drafters, sequences)]
    for request, sequence in zip(stopped, sequences):
        alone = DraftRuntime(draft_model("layer-skip")).draft(sequence, 6, SamplingParams(), stop_below=0.1)
        assert cloud.draft_queued(request).tokens == alone.tokens
    assert any(len(r.block.tokens) < 6 for r in stopped)  # type: ignore[union-attr]
    stopped.clear()
    del drafters, requests, request, first
    gc.collect()
    assert len(cloud.runtime.live_caches) == 0, "a session's draft cache outlived it"


# ---------------------------------------------------------------- the simulator


def test_cloud_sd_replay_is_exact_and_charges_the_draft_to_the_verifier() -> None:
    from dataclasses import replace

    from edgespec.drivers.cost_profile import HardwareProfile, h200_profile
    from edgespec.drivers.virtual_devices import Link
    from edgespec.link.profiles import PROFILES
    from edgespec.sim.simulate import SimConfig, clients_sweep, colocated_comparison, link_for, run_mode
    from edgespec.sim.trace import record_trace

    target, draft = target_model(), draft_model("layer-skip")
    trace = record_trace(TargetRuntime(target), draft, PROMPT, NEW_TOKENS + 8, [], "p0", "test")
    gamma = 4
    profile = HardwareProfile(
        name="test",
        forward_ms={1: 10.0, 5: 12.0},
        prefill_ms_per_token=0.5,
        draft_ms_per_token=3.0,
        server_draft_ms_per_token=2.0,
        server_draft_prefill_ms_per_token=0.0,
    )
    # Full blocks, so the replay is exact against the real engine (with a stop, the trace
    # approximates the draft's confidence past its first disagreement).
    config = SimConfig(modes=("cloud-sd",), max_new_tokens=NEW_TOKENS, gamma=gamma, draft_stop=0.0)
    (colocated,) = run_mode([trace], Mode.CLOUD_SD, profile, Link(one_way_s=0.02), config)
    (edge,) = run_mode([trace], Mode.SD, profile, Link(one_way_s=0.02), config)
    real = LocalEngine(TargetRuntime(target), DraftRuntime(draft)).generate(
        PROMPT, Mode.CLOUD_SD, GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=gamma, draft_stop=0.0)
    )
    assert colocated["tokens"] == list(reference()) == real.tokens
    stats = colocated["stats"]
    assert (
        (stats["rounds"], stats["accepted"])
        == (real.stats.rounds, real.stats.accepted)
        == (edge["stats"]["rounds"], edge["stats"]["accepted"])
    )
    # With a stop, the server's draft ends its blocks where the edge's would.
    stop = SimConfig(modes=("cloud-sd",), max_new_tokens=NEW_TOKENS, gamma=gamma, draft_stop=0.1)
    (colocated_stop,) = run_mode([trace], Mode.CLOUD_SD, profile, Link(one_way_s=0.02), stop)
    (edge_stop,) = run_mode([trace], Mode.SD, profile, Link(one_way_s=0.02), stop)
    assert colocated_stop["tokens"] == colocated["tokens"]
    assert [colocated_stop["stats"][k] for k in ("rounds", "drafted", "accepted")] == [
        edge_stop["stats"][k] for k in ("rounds", "drafted", "accepted")
    ]
    assert colocated_stop["stats"]["drafted"] < stats["drafted"]
    # Every round: its drafted tokens at the server's 2 ms each, on the verifier, then the verify.
    assert stats["server_draft_s"] == pytest.approx(stats["drafted"] * 0.002)
    assert stats["server_verify_s"] == pytest.approx(edge["stats"]["server_verify_s"] + stats["server_draft_s"])
    assert colocated["verifier_busy_s"] == pytest.approx(edge["verifier_busy_s"] + stats["server_draft_s"])
    modes = ("cloud-ar", "sd", "cloud-sd")
    sweep = clients_sweep([trace], profile, link_for(PROFILES["lan"], profile), "lan", modes, (1, 3), config)
    comparison = colocated_comparison(sweep, profile, "lan", modes, config)
    assert comparison["predicted_factor"] == pytest.approx(1 + gamma * 2.0 / 12.0)
    one = comparison["points"]["1"]
    assert one["sd"]["verifier_s_per_token"] == pytest.approx(edge["verifier_busy_s"] / NEW_TOKENS)
    # Full blocks of γ except where the budget clips the last: the simulated factor is the predicted one.
    assert one["sd"]["verifier_factor_vs_cloud_sd"] == pytest.approx(comparison["predicted_factor"], rel=0.05)
    assert one["cloud-ar"]["verifier_factor_vs_cloud_sd"] < one["sd"]["verifier_factor_vs_cloud_sd"]
    # The H200 profile carries a (derived) server draft cost; a profile without one says what is missing.
    assert h200_profile(None).server_draft_ms_per_token > 0
    with pytest.raises(ValueError, match="server-side draft cost"):
        run_mode([trace], Mode.CLOUD_SD, replace(profile, server_draft_ms_per_token=None), Link(), config)
