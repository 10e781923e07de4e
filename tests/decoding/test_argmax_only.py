"""Greedy sessions get the target's argmax ids from a forward, not its logits: the same ids, the
same verdicts, one copy per batched pass."""

from __future__ import annotations

import torch

from edgespec.decoding.verification import greedy_verdict, greedy_verdict_from_choices
from edgespec.models.target import ScoreRequest, TargetRuntime
from tests.support.tiny_models import tiny_model


def test_argmax_only_returns_the_ids_of_the_logits_it_replaces_alone_and_batched() -> None:
    runtime = TargetRuntime(tiny_model("qwen2", seed=0))
    prompts = [[3, 17, 42, 8, 9, 61], [5, 6, 7], [90, 1, 2, 3, 4, 5, 6, 7]]

    def requests(argmax_only: bool) -> list[ScoreRequest]:
        made = []
        for prompt in prompts:
            kv = runtime.new_cache()
            runtime.score_tail(prompt[:-1], 1, kv=kv)
            made.append(ScoreRequest(prompt + [11, 12, 13], 4, kv, argmax_only=argmax_only))
        return made

    logits = runtime.score_batch(requests(False))
    ids = runtime.score_batch(requests(True))
    mixed = runtime.score_batch(
        [
            r if i % 2 else ScoreRequest(r.sequence, r.tail, r.kv, argmax_only=True)
            for i, r in enumerate(requests(False))
        ]
    )
    for row in range(len(prompts)):
        assert ids[row].dtype == torch.long and ids[row].shape == (4,)
        assert ids[row].tolist() == logits[row].argmax(dim=-1).tolist()
        assert mixed[row].tolist() == (ids[row].tolist() if row % 2 == 0 else logits[row].tolist())
    alone = runtime.score_tail(prompts[1] + [11, 12, 13], 4, argmax_only=True)
    assert alone.tolist() == ids[1].tolist()


def test_a_verdict_from_the_choices_equals_the_one_from_the_logits() -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        logits = torch.randn(5, 40, generator=generator).to(torch.bfloat16)
        tokens = torch.argmax(logits[:4], dim=-1).tolist()
        tokens[int(torch.randint(0, 4, (1,), generator=generator))] = 0  # a rejection somewhere (or not)
        choices = torch.argmax(logits, dim=-1).tolist()
        assert (
            greedy_verdict_from_choices(choices, tokens)
            == greedy_verdict(logits, tokens)
            == greedy_verdict(logits.float(), tokens)
        )


def test_a_decode_token_comes_from_the_ids_when_greedy_and_from_the_logits_when_sampled() -> None:
    from edgespec.core.config import SamplingParams
    from edgespec.sampling import choose_token, token_from_forward

    logits = torch.tensor([0.1, 2.0, 0.3, 1.9])
    assert token_from_forward(torch.tensor(1), SamplingParams()) == 1  # greedy: the forward's argmax id
    sampled = SamplingParams(temperature=0.7)
    assert token_from_forward(logits, sampled, 0.9) == choose_token(logits, sampled, 0.9)
