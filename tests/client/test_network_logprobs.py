"""Log-probabilities through the Python API over real gRPC: in every mode that has a target, each
committed token's entry is the target's own log-softmax there (``generate(output_scores=True)``
for greedy text, one teacher-forced forward for sampled text), whether the token was an accepted
draft, a rejection's resample or a bonus; edge-only, which has no target, refuses to give any."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from edgespec.client.edge_client import EdgeClient
from edgespec.core.config import GenerationConfig, SamplingParams
from edgespec.core.modes import Mode
from edgespec.exits.heads import ExitHeads, ExitSpec
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.cloud_draft import CloudDraft
from edgespec.server.servicer import VerifierService
from tests.support.logprob_oracle import assert_logprobs_match, generate_with_logprobs, teacher_forced_logprobs
from tests.support.tiny_models import layer_skip_copy, tiny_model

PROMPT = [3, 17, 42, 8, 9, 61]
NEW_TOKENS = 20
TARGET_MODES = [Mode.CLOUD_AR, Mode.SD, Mode.SD_EE, Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED, Mode.CLOUD_SD]


@lru_cache(maxsize=None)
def target_model() -> torch.nn.Module:
    return tiny_model("qwen2", seed=0)


def layer_skip_draft() -> torch.nn.Module:
    return layer_skip_copy(tiny_model("qwen2", seed=0), keep=3)


@pytest.fixture(scope="module")
def address():
    exits = ExitHeads([ExitSpec(2), ExitSpec(3)], target_model().config.hidden_size)
    service = VerifierService(
        TargetRuntime(tiny_model("qwen2", seed=0), exits),
        tokenizer=None,
        eos_ids=frozenset(),
        cloud_draft=CloudDraft(layer_skip_draft()),
    )
    server = RunningServer(service, ServerConfig(port=0))
    yield f"127.0.0.1:{server.port}"
    server.stop()


def client(address: str) -> EdgeClient:
    return EdgeClient(address, DraftRuntime(layer_skip_draft()))


@pytest.mark.parametrize("mode", TARGET_MODES, ids=lambda m: m.value)
def test_greedy_logprobs_equal_generates_scores_in_every_mode(address: str, mode: Mode) -> None:
    tokens, oracle = generate_with_logprobs(target_model(), PROMPT, NEW_TOKENS)
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=3, early_verdicts=mode.uses_exits, logprobs=5)
    result = client(address).generate(PROMPT, mode, config)
    assert result.tokens == tokens
    assert result.logprobs is not None
    assert_logprobs_match(result.logprobs, tokens, oracle, top=5)


@pytest.mark.parametrize("mode", TARGET_MODES, ids=lambda m: m.value)
def test_sampled_logprobs_are_the_targets_at_each_sampled_token(address: str, mode: Mode) -> None:
    config = GenerationConfig(
        max_new_tokens=NEW_TOKENS,
        gamma=4,
        sampling=SamplingParams(temperature=1.5),
        seed=11,
        logprobs=0,
    )
    result = client(address).generate(PROMPT, mode, config)
    assert result.logprobs is not None and len(result.logprobs) == len(result.tokens) == NEW_TOKENS
    if mode.uses_draft:
        assert result.stats.acceptance_rate < 1.0, "no rejection: the resampled path went untested"
    oracle = teacher_forced_logprobs(target_model(), PROMPT, result.tokens)
    assert_logprobs_match(result.logprobs, result.tokens, oracle, top=0)


def test_streamed_commits_carry_their_logprobs_first(address: str) -> None:
    heard: list[tuple[str, list[int]]] = []
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=3, logprobs=2)
    result = client(address).generate(
        PROMPT,
        Mode.SD,
        config,
        on_logprobs=lambda entries: heard.append(("logprobs", [e.token for e in entries])),
        on_commit=lambda tokens: heard.append(("commit", tokens)),
    )
    assert [kind for kind, _ in heard] == ["logprobs", "commit"] * (len(heard) // 2)
    assert all(heard[i][1] == heard[i + 1][1] for i in range(0, len(heard), 2))
    assert sum(len(tokens) for kind, tokens in heard if kind == "commit") == len(result.tokens)


def test_without_logprobs_none_are_sent(address: str) -> None:
    result = client(address).generate(PROMPT, Mode.SD, GenerationConfig(max_new_tokens=8))
    assert result.logprobs is None


def test_edge_only_has_no_target_to_give_logprobs(address: str) -> None:
    with pytest.raises(ValueError, match="edge-only"):
        client(address).generate(PROMPT, Mode.EDGE_ONLY, GenerationConfig(max_new_tokens=4, logprobs=1))


def test_more_than_twenty_alternatives_are_refused() -> None:
    with pytest.raises(ValueError, match="0..20"):
        GenerationConfig(logprobs=21)
