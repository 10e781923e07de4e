"""Greedy consumers take logits where the forward left them; everyone else gets float32 on the host."""

from __future__ import annotations

import torch

from edgespec.decoding.verification import greedy_verdict
from edgespec.models.kv import logits_out


def test_logits_leave_an_accelerator_only_when_the_consumer_needs_more_than_the_argmax() -> None:
    on_device = torch.empty(5, 11, dtype=torch.bfloat16, device="meta")  # stands in for a GPU tensor
    assert logits_out(on_device, to_host=False) is on_device
    host = logits_out(torch.zeros(5, 11, dtype=torch.bfloat16), to_host=False)
    assert host.dtype == torch.float32 and host.device.type == "cpu"  # on the CPU: unchanged behaviour
    assert logits_out(torch.zeros(5, 11, dtype=torch.bfloat16), to_host=True).dtype == torch.float32


def test_a_greedy_verdict_on_bfloat16_logits_equals_the_one_on_their_float32_copy() -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        logits = torch.randn(5, 40, generator=generator).to(torch.bfloat16)
        tokens = torch.argmax(logits[:4], dim=-1).tolist()
        tokens[int(torch.randint(0, 4, (1,), generator=generator))] = 0  # a rejection somewhere (or not)
        assert greedy_verdict(logits, tokens) == greedy_verdict(logits.float(), tokens)
