"""The real pair over the network: `edgespec serve` (Qwen2.5-Coder-1.5B, fp32), `edgespec link
--profile wan` and `edgespec generate` (0.5B drafting) as separate processes, one MT-bench and one
HumanEval prompt, every lossless mode equal to `transformers` `generate` on the target."""

from __future__ import annotations

import gc
import os
from typing import Iterator

import pytest
import torch

from edgespec.bench.processes import deploy, run_client
from edgespec.data.prompt_sets import PromptRecord, load_prompts
from edgespec.models.loading import load_model, load_tokenizer
from edgespec.prompting import render_prompt

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("EDGESPEC_REAL_PAIR"), reason="needs the real model pair: set EDGESPEC_REAL_PAIR=1"
    ),
]

TARGET, DRAFT = "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"
LOSSLESS_MODES = ["cloud-ar", "sd", "sd-ee", "sd-ee-predraft", "sd-ee-pipelined"]
NEW_TOKENS = 48


@pytest.fixture(scope="module")
def prompts() -> list[PromptRecord]:
    return [load_prompts("mtbench", 1)[0], load_prompts("humaneval", 1)[0]]


@pytest.fixture(scope="module")
def oracle(prompts: list[PromptRecord]) -> dict[str, list[int]]:
    """`generate` on the fp32 target per prompt, computed before the server takes the memory."""
    target = load_model(TARGET, "float32")
    draft_tokenizer = load_tokenizer(DRAFT)
    outputs = {}
    for record in prompts:
        ids = render_prompt(target.tokenizer, record.messages)
        assert ids == render_prompt(draft_tokenizer, record.messages), "draft and target tokenizers disagree"
        with torch.inference_mode():
            out = target.model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
            )
        outputs[record.id] = out[0, len(ids) :].tolist()
    del target
    gc.collect()
    return outputs


@pytest.fixture(scope="module")
def address(oracle: dict[str, list[int]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log_dir = tmp_path_factory.mktemp("real-network")
    with deploy(TARGET, "float32", "wan", log_dir=str(log_dir)) as deployment:
        address = f"127.0.0.1:{deployment.client_port}"
        run_client(address, ["--draft", DRAFT, "--dtype", "float32", "--max-new-tokens", "4", "warm-up"])
        yield address


@pytest.mark.parametrize("which", [0, 1], ids=["mtbench", "humaneval"])
def test_every_lossless_mode_over_wan_on_the_real_pair_equals_generate(
    prompts: list[PromptRecord], oracle: dict[str, list[int]], address: str, which: int
) -> None:
    record = prompts[which]
    common = ["--draft", DRAFT, "--dtype", "float32", "--max-new-tokens", str(NEW_TOKENS)]
    diverged = []
    for mode in LOSSLESS_MODES:
        result = run_client(address, [*common, "--mode", mode, record.messages[0]["content"]])
        if result["tokens"] != oracle[record.id]:
            diverged.append(mode)
    assert diverged == []
