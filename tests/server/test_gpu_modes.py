"""Correctness on an accelerator: a CUDA target (tiny random Qwen2, fp32) with a CPU draft gives
exactly `generate`'s greedy output in process and through a real gRPC server, every lossless
mode, including 16 concurrent sessions verified in batched GPU forwards."""

from __future__ import annotations

import asyncio
import random

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
from edgespec.server.servicer import VerifierService
from tests.support.tiny_models import VOCAB, layer_skip_copy, tiny_model

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (the target runs on the GPU)"
)

NEW_TOKENS = 24
SESSIONS = 16
NETWORK_MODES = [Mode.CLOUD_AR, Mode.SD, Mode.SD_EE, Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED]


def gpu() -> torch.device:
    return torch.device("cuda")


def exits() -> ExitHeads:
    return ExitHeads([ExitSpec(2), ExitSpec(3)], tiny_model("qwen2", seed=0).config.hidden_size)


def cpu_draft() -> DraftRuntime:
    return DraftRuntime(layer_skip_copy(tiny_model("qwen2", seed=0), keep=3))


def prompts() -> list[list[int]]:
    rng = random.Random(3)
    return [[rng.randrange(1, VOCAB) for _ in range(rng.randrange(2, 12))] for _ in range(SESSIONS)]


def reference(model: torch.nn.Module, prompt: list[int]) -> list[int]:
    """The oracle: `generate` on the same GPU model, greedy."""
    ids = torch.tensor([prompt], device=model.device)
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0
    )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("mode", [Mode.CLOUD_AR, Mode.SD, Mode.SD_EE], ids=lambda mode: mode.value)
def test_a_gpu_target_with_a_cpu_draft_equals_generate_in_process(mode: Mode) -> None:
    target = tiny_model("qwen2", seed=0).to(gpu())
    prompt = prompts()[0]
    expected = reference(target, prompt)
    engine = LocalEngine(TargetRuntime(target, exits()), cpu_draft())
    result = engine.generate(prompt, mode, GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=4))
    assert result.tokens == expected


def test_concurrent_sessions_on_a_gpu_verifier_equal_generate_in_every_mode() -> None:
    all_prompts = prompts()
    expected = [reference(tiny_model("qwen2", seed=0).to(gpu()), p) for p in all_prompts]
    runtime = TargetRuntime(tiny_model("qwen2", seed=0).to(gpu()), exits())
    service = VerifierService(runtime, tokenizer=None, eos_ids=frozenset())
    server = RunningServer(service, ServerConfig(port=0))
    address = f"127.0.0.1:{server.port}"

    async def one(index: int) -> list[int]:
        client = EdgeClient(address, cpu_draft())
        config = GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=1 + index % 5)
        return (await client.agenerate(all_prompts[index], NETWORK_MODES[index % len(NETWORK_MODES)], config)).tokens

    async def all_sessions() -> list[list[int]]:
        return await asyncio.gather(*(one(i) for i in range(SESSIONS)))

    try:
        outputs = asyncio.run(all_sessions())
    finally:
        server.stop()
    modes = [NETWORK_MODES[i % len(NETWORK_MODES)].value for i in range(SESSIONS)]
    mismatched = [(i, modes[i]) for i, (got, want) in enumerate(zip(outputs, expected)) if got != want]
    assert mismatched == []
