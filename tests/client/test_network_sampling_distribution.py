"""Sampling is lossless through the real client/server path: EdgeClient over gRPC, the draft's
rows on the wire (or, in cloud-sd, the server's own draft), the server's position-tied uniforms,
γ from 1 to 8. Over many seeds, the
empirical distribution of the first two generated tokens matches the target's exact one.

The bound is Bretagnolle-Huber-Carol: for N samples over V categories,
P(total variation > ε) <= 2^V exp(-2 N ε²). With V = 12, N = 800 and a failure probability of
1e-6, ε = 0.118 (the seeds are fixed, so the run is deterministic; the bound says how unlikely a
false alarm was when choosing them). The draft is a different random model: a verifier that
accepted every draft token would show the draft's own distribution, 0.62 (first token) and 0.54
(second) from the target's, which the test asserts is far outside ε, so the test can fail. (A
subtler bug, resampling a rejection from p instead of norm(max(0, p - q)), moves the first token
by 0.15: beyond ε, though not by much.)
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from edgespec.client.edge_client import EdgeClient
from edgespec.core.config import GenerationConfig, SamplingParams
from edgespec.core.modes import Mode
from edgespec.exits.heads import ExitHeads, ExitSpec
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from edgespec.sampling import logits_to_probs
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.cloud_draft import CloudDraft
from edgespec.server.servicer import VerifierService
from tests.support.tiny_models import tiny_model

VOCAB = 12
PROMPT = [3, 7, 1, 5]
SAMPLES = 800
FAILURE_PROBABILITY = 1e-6
SAMPLING = SamplingParams(temperature=1.0)


def tv_bound(samples: int, categories: int, failure_probability: float) -> float:
    return math.sqrt((categories * math.log(2) + math.log(1 / failure_probability)) / (2 * samples))


def exact_first_two(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's distribution of the first generated token, and the marginal of the second
    (summed over every first token), at temperature 1."""
    with torch.inference_mode():
        first = logits_to_probs(model(torch.tensor([PROMPT])).logits[0, -1], SAMPLING)
        after = logits_to_probs(
            model(torch.tensor([PROMPT + [token] for token in range(VOCAB)])).logits[:, -1], SAMPLING
        )
    return first.double(), (first.double() @ after.double())


def total_variation(counts: Counter[int], exact: torch.Tensor) -> float:
    total = sum(counts.values())
    return 0.5 * sum(abs(counts.get(token, 0) / total - float(exact[token])) for token in range(VOCAB))


def test_sampled_tokens_over_the_network_follow_the_targets_distribution() -> None:
    target = tiny_model("qwen2", seed=0, vocab=VOCAB)
    draft = tiny_model("qwen2", seed=99, vocab=VOCAB)
    bound = tv_bound(SAMPLES, VOCAB, FAILURE_PROBABILITY)
    target_first, target_second = exact_first_two(target)
    draft_first, draft_second = exact_first_two(draft)
    # What a verifier that rubber-stamped the draft would produce: far outside the bound.
    assert 0.5 * float((draft_first - target_first).abs().sum()) > 4 * bound
    assert 0.5 * float((draft_second - target_second).abs().sum()) > 4 * bound
    assert abs(bound - 0.118) < 1e-3

    exits = ExitHeads([ExitSpec(2)], target.config.hidden_size)  # threshold 0: a hint every round
    service = VerifierService(
        TargetRuntime(target, exits), tokenizer=None, eos_ids=frozenset(), cloud_draft=CloudDraft(draft)
    )
    server = RunningServer(service, ServerConfig(port=0))
    address = f"127.0.0.1:{server.port}"
    reused = EdgeClient(address, DraftRuntime(draft))
    firsts: Counter[int] = Counter()
    seconds: Counter[int] = Counter()
    modes: Counter[str] = Counter()
    try:
        for seed in range(SAMPLES):
            # γ 1..8, with at least γ new tokens so the budget never shortens the first block;
            # three modes: the pipelined one shipping tagged pre-drafts with their rows, cloud-sd
            # drafting on the server (the same draft weights, no draft on the client).
            mode = (Mode.SD, Mode.SD_EE_PIPELINED, Mode.CLOUD_SD)[seed % 3]
            gamma = 1 + (seed // 3) % 8
            config = GenerationConfig(max_new_tokens=max(2, gamma), gamma=gamma, sampling=SAMPLING, seed=seed)
            # A pre-draft left running by one generation corrupts the next one's draft cache
            # (tests/client/test_client_reuse.py): the pre-drafting mode gets a fresh
            # client and draft runtime (on the same weights) each time.
            client = (
                reused
                if mode is Mode.SD
                else EdgeClient(address)
                if mode is Mode.CLOUD_SD
                else EdgeClient(address, DraftRuntime(draft))
            )
            result = client.generate(PROMPT, mode, config)
            firsts[result.tokens[0]] += 1
            seconds[result.tokens[1]] += 1
            modes[mode.value] += 1
    finally:
        server.stop()
    assert sum(firsts.values()) == SAMPLES and len(modes) == 3
    first_tv, second_tv = total_variation(firsts, target_first), total_variation(seconds, target_second)
    print(f"total variation: first token {first_tv:.3f}, second {second_tv:.3f}, bound {bound:.3f}")
    assert first_tv < bound, (
        f"first token: total variation {first_tv:.3f} from the target's distribution (bound {bound:.3f})"
    )
    assert second_tv < bound, (
        f"second token: total variation {second_tv:.3f} from the target's distribution (bound {bound:.3f})"
    )
