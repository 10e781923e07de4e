"""The LM head gets its rows in the standard layout (a strided view of the last rows made a
bf16 prefill 4x slower on this CPU), and the logits do not change."""

from __future__ import annotations

import torch

from edgespec.models.target import TargetRuntime
from tests.support.tiny_models import tiny_model


def test_the_head_sees_standard_strides_and_the_same_logits() -> None:
    model = tiny_model("qwen2", seed=0)
    prompt = list(range(3, 15))
    with torch.no_grad():
        expected = model(torch.tensor([prompt])).logits[0, -1]
    runtime = TargetRuntime(model)
    seen: list[tuple[int, ...]] = []
    model.get_output_embeddings().register_forward_pre_hook(lambda module, args: seen.append(args[0].stride()))
    logits = runtime.score_tail(prompt, 1)
    hidden = model.config.hidden_size
    assert seen == [(hidden, hidden, 1)]  # without the fix: (len(prompt) * hidden, hidden, 1)
    torch.testing.assert_close(logits[0], expected, rtol=0, atol=1e-5)
    TargetRuntime(model)  # a second runtime on the same model does not stack a second hook
    assert len(model.get_output_embeddings()._forward_pre_hooks) == 2
