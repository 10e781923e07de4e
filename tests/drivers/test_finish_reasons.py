"""Every mode finishes with the same reason in every driver: the in-process engine (the
virtual-clock driver with the real models) and the gRPC client against a real server stop a text
at the server's EOS with "eos" and at max_new_tokens with "length", and agree on the tokens."""

from __future__ import annotations

from functools import lru_cache
from typing import Iterator

import pytest
import torch

from edgespec.client.edge_client import EdgeClient
from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.drivers.local_engine import LocalEngine
from edgespec.exits.heads import ExitHeads, ExitSpec
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.cloud_draft import CloudDraft
from edgespec.server.servicer import VerifierService
from tests.support.tiny_models import greedy_reference, layer_skip_copy, tiny_model

PROMPT = [3, 17, 42, 8, 9, 61]
HORIZON = 24
EOS_AT = 4  # the target's greedy token here is the EOS id: it ends the text after 5 tokens
SHORT = 3  # a budget that ends the text before the EOS


@lru_cache(maxsize=None)
def target_model() -> torch.nn.Module:
    return tiny_model("qwen2", seed=0)


@lru_cache(maxsize=None)
def draft_model() -> torch.nn.Module:
    return layer_skip_copy(tiny_model("qwen2", seed=0), keep=3)


@lru_cache(maxsize=None)
def eos_id() -> int:
    reference = greedy_reference(target_model(), PROMPT, HORIZON)
    assert reference[EOS_AT] not in reference[:EOS_AT], "the EOS must first appear where it is put"
    return reference[EOS_AT]


def exits() -> ExitHeads:
    return ExitHeads([ExitSpec(2), ExitSpec(3)], target_model().config.hidden_size)


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    """A server with exits and a draft of its own (cloud-sd), whose EOS is ``eos_id()``."""
    service = VerifierService(
        TargetRuntime(target_model(), exits()),
        tokenizer=None,
        eos_ids=frozenset({eos_id()}),
        cloud_draft=CloudDraft(draft_model()),
    )
    server = RunningServer(service, ServerConfig(port=0))
    yield f"127.0.0.1:{server.port}"
    server.stop()


STOPS = {"eos": HORIZON, "length": SHORT}


@pytest.mark.parametrize("stop", list(STOPS))
@pytest.mark.parametrize("mode", list(Mode), ids=lambda m: m.value)
def test_every_mode_finishes_with_the_same_reason_in_process_and_over_grpc(address: str, mode: Mode, stop: str) -> None:
    config = GenerationConfig(max_new_tokens=STOPS[stop], gamma=3, eos_ids=frozenset({eos_id()}), early_verdicts=True)
    engine = LocalEngine(TargetRuntime(target_model(), exits()), DraftRuntime(draft_model()))
    in_process = engine.generate(PROMPT, mode, config)
    over_grpc = EdgeClient(address, DraftRuntime(draft_model())).generate(PROMPT, mode, config)
    assert over_grpc.stats.finish_reason == in_process.stats.finish_reason
    assert over_grpc.tokens == in_process.tokens
    if mode is not Mode.EDGE_ONLY:  # the draft alone need not meet the target's EOS
        expected = greedy_reference(target_model(), PROMPT, STOPS[stop], eos=eos_id())
        assert in_process.tokens == expected and in_process.stats.finish_reason == stop
