"""Correctness on an accelerator: a CUDA target (tiny random Qwen2, fp32) with a CPU draft gives
exactly `generate`'s greedy output in process and through a real gRPC server, every lossless mode,
including 16 concurrent sessions verified in batched GPU forwards.

    python scripts/gpu_check.py          # exits non-zero on any mismatch
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from tiny_models import VOCAB, layer_skip_copy, tiny_model  # noqa: E402

from edgespec.core.config import GenerationConfig  # noqa: E402
from edgespec.core.modes import Mode  # noqa: E402
from edgespec.drivers.local_engine import LocalEngine
from edgespec.exits.heads import ExitHeads, ExitSpec  # noqa: E402
from edgespec.models.draft import DraftRuntime  # noqa: E402
from edgespec.models.target import TargetRuntime  # noqa: E402

NEW_TOKENS = 24


def reference(model: torch.nn.Module, prompt: list[int]) -> list[int]:
    ids = torch.tensor([prompt], device=model.device)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    return out[0, len(prompt) :].tolist()


def main() -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device {device}, torch {torch.__version__}", flush=True)
    target = tiny_model("qwen2", seed=0).to(device)
    exits = ExitHeads([ExitSpec(2), ExitSpec(3)], target.config.hidden_size)
    draft = DraftRuntime(layer_skip_copy(tiny_model("qwen2", seed=0), keep=3))
    rng = random.Random(3)
    prompts = [[rng.randrange(1, VOCAB) for _ in range(rng.randrange(2, 12))] for _ in range(16)]
    expected = [reference(target, p) for p in prompts]
    failures = 0
    engine = LocalEngine(TargetRuntime(target, exits), draft)
    for mode in (Mode.CLOUD_AR, Mode.SD, Mode.SD_EE):
        got = engine.generate(prompts[0], mode, GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=4)).tokens
        ok = got == expected[0]
        failures += not ok
        print(f"in process {mode.value}: {'== generate' if ok else 'MISMATCH'}", flush=True)

    from edgespec.client.edge_client import EdgeClient
    from edgespec.server.app import RunningServer, ServerConfig
    from edgespec.server.servicer import VerifierService

    service = VerifierService(TargetRuntime(tiny_model("qwen2", seed=0).to(device), exits), tokenizer=None, eos_ids=frozenset())
    server = RunningServer(service, ServerConfig(port=0))
    address = f"127.0.0.1:{server.port}"
    modes = [Mode.CLOUD_AR, Mode.SD, Mode.SD_EE, Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED]

    async def all_sessions() -> list[list[int]]:
        async def one(index: int) -> list[int]:
            client = EdgeClient(address, DraftRuntime(layer_skip_copy(tiny_model("qwen2", seed=0), keep=3)))
            config = GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=1 + index % 5)
            return (await client.agenerate(prompts[index], modes[index % len(modes)], config)).tokens

        return await asyncio.gather(*(one(i) for i in range(len(prompts))))

    try:
        outputs = asyncio.run(all_sessions())
    finally:
        server.stop()
    for index, (got, want) in enumerate(zip(outputs, expected)):
        if got != want:
            failures += 1
            print(f"over gRPC session {index} ({modes[index % len(modes)].value}): MISMATCH", flush=True)
    print(f"over gRPC: {len(prompts) - sum(g != w for g, w in zip(outputs, expected))}/{len(prompts)} sessions == generate; "
          f"sessions per GPU forward: {dict(sorted(service.runtime.batch_sizes.items()))}", flush=True)
    print("PASS" if failures == 0 else f"FAIL ({failures})", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
