"""Context reuse over the network: a server with a prefix store (`serve --prefix-cache-tokens`)
starts a session's cache from the longest prefix an earlier finished session of the same tenant
left, and a client with ``reuse_draft_cache`` keeps its draft's cache across generations. A
conversation that grows turn by turn then prefills only its new turn on both sides, and every
continuation equals `generate` on the whole prompt (fp32). Real gRPC on loopback, tiny models."""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import pytest
import torch

from edgespec.client.edge_client import ClientOptions, EdgeClient
from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.exits.heads import ExitHeads, ExitSpec
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.servicer import VerifierService
from edgespec.transport.security import ClientSecurity
from tests.support.tiny_models import greedy_reference, layer_skip_copy, tiny_model

SYSTEM = [3, 17, 42, 8, 9, 61, 5, 22, 71, 30, 11, 4, 19, 27]
TURNS = [[50, 51, 52, 53], [60, 61, 62], [70, 71, 72, 73, 74]]
CONFIG = GenerationConfig(max_new_tokens=10, gamma=3)


@lru_cache(maxsize=None)
def target_model() -> torch.nn.Module:
    return tiny_model("qwen2", seed=0)


class CountingDraft(DraftRuntime):
    """The real draft runtime, recording how many tokens each generation's first forward fed."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        self.first_fed: list[int] = []
        self._new_generation = True

    def mark_new_generation(self) -> None:
        self._new_generation = True

    def _sync(self, sequence: Sequence[int]) -> list[int]:
        pending = super()._sync(sequence)
        if self._new_generation:
            self.first_fed.append(len(pending))
            self._new_generation = False
        return pending


@pytest.fixture(scope="module")
def served():
    service = VerifierService(
        TargetRuntime(target_model(), ExitHeads([ExitSpec(2), ExitSpec(3)], target_model().config.hidden_size)),
        tokenizer=None,
        eos_ids=frozenset(),
        prefix_cache_tokens=4096,
    )
    server = RunningServer(service, ServerConfig(port=0))
    yield service, f"127.0.0.1:{server.port}"
    server.stop()


def conversation(
    service: VerifierService, client: EdgeClient, draft: CountingDraft | None, mode: Mode
) -> tuple[list[list[int]], list[int]]:
    """Each turn's prompt is the previous prompt, its reply and the new turn; returns the
    prompts and, per generation, the positions the server found cached."""
    prompts, reused = [], []
    prompt = list(SYSTEM)
    for turn in TURNS:
        prompt = prompt + turn
        before = service.prefix_caches.stats().reused_tokens
        if draft is not None:
            draft.mark_new_generation()
        result = client.generate(prompt, mode, CONFIG)
        assert result.tokens == greedy_reference(target_model(), prompt, CONFIG.max_new_tokens), (mode, len(prompts))
        reused.append(service.prefix_caches.stats().reused_tokens - before)
        prompts.append(prompt)
        prompt = prompt + list(result.tokens)
    return prompts, reused


@pytest.mark.parametrize("mode", [Mode.CLOUD_AR, Mode.SD, Mode.SD_EE_PIPELINED])
def test_a_growing_conversation_prefills_only_its_new_turn_and_equals_generate(served, mode: Mode) -> None:
    service, address = served
    draft = CountingDraft(layer_skip_copy(tiny_model("qwen2", seed=0), keep=2)) if mode.uses_draft else None
    # A tenant of its own per mode (the store is per auth identity), so each run starts cold.
    security = ClientSecurity(token=f"tenant-{mode.value}")
    client = EdgeClient(address, draft, ClientOptions(reuse_draft_cache=True, security=security))
    prompts, reused = conversation(service, client, draft, mode)
    assert reused[0] == 0
    for index in range(1, len(prompts)):
        # Everything before the new turn was cached: the last prompt, its reply (but the reply's
        # last token, which the finished session never fed), and nothing of the new turn.
        previous_end = len(prompts[index]) - len(TURNS[index])
        assert previous_end - 1 <= reused[index] < previous_end, (index, reused)
    if draft is not None:
        assert draft.first_fed[0] == len(prompts[0])
        for index in range(1, len(prompts)):
            assert draft.first_fed[index] <= len(TURNS[index]) + CONFIG.max_new_tokens, draft.first_fed


def test_tenants_do_not_share_prefixes(served) -> None:
    service, address = served
    prompt = [80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91]
    alice = EdgeClient(address, None, ClientOptions(security=ClientSecurity(token="alice")))
    bob = EdgeClient(address, None, ClientOptions(security=ClientSecurity(token="bob")))
    alice.generate(prompt, Mode.CLOUD_AR, CONFIG)
    hits = service.prefix_caches.stats().hits
    assert bob.generate(prompt + [5], Mode.CLOUD_AR, CONFIG).tokens == greedy_reference(
        target_model(), prompt + [5], CONFIG.max_new_tokens
    )
    assert service.prefix_caches.stats().hits == hits  # bob's session found nothing of alice's
    alice.generate(prompt + [5], Mode.CLOUD_AR, CONFIG)
    assert service.prefix_caches.stats().hits == hits + 1


def test_without_the_option_the_server_keeps_nothing() -> None:
    service = VerifierService(TargetRuntime(target_model()), tokenizer=None, eos_ids=frozenset())
    assert service.prefix_caches is None
