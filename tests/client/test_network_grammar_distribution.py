"""Sampling under a grammar is lossless through the real client/server path: over many seeds, the
first generated token follows the target's *masked* distribution (its softmax with the grammar's
forbidden ids removed), whether the draft drafts under the mask or freely, in `sd` and
`sd-ee-pipelined`. The draft is a different random model, so rejections and resamples happen (its
masked distribution is 0.56 in total variation from the target's, against a bound of 0.14).

The bound is Bretagnolle-Huber-Carol, as in test_network_sampling_distribution.py: for N samples
over V categories, P(total variation > eps) <= 2^V exp(-2 N eps^2); the seeds are fixed, so the run
is deterministic."""

from __future__ import annotations

import math
from collections import Counter

import torch

from edgespec.client.edge_client import EdgeClient
from edgespec.core.config import GenerationConfig, SamplingParams
from edgespec.core.grammar import Grammar
from edgespec.core.modes import Mode
from edgespec.decoding.grammar import GrammarMatcher, apply_mask, tokenizer_fingerprint
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.servicer import VerifierService
from tests.support.json_tokenizer import json_tokenizer
from tests.support.tiny_models import tiny_model

SAMPLES = 480
FAILURE_PROBABILITY = 1e-6
PATTERN = "[a-f][a-f]"


def test_sampled_first_tokens_follow_the_targets_masked_distribution() -> None:
    tokenizer = json_tokenizer()
    eos = tokenizer.eos_token_id
    grammar = Grammar("regex", PATTERN, tokenizer_fingerprint(tokenizer))
    target, draft = tiny_model("qwen2", seed=0), tiny_model("qwen2", seed=99)
    prompt = tokenizer.encode("pick: ")
    allowed = GrammarMatcher(grammar, tokenizer, target.config.vocab_size, [eos]).mask()
    with torch.inference_mode():
        exact = torch.softmax(apply_mask(target(torch.tensor([prompt])).logits[0, -1], allowed), dim=-1).double()
        drafts = torch.softmax(apply_mask(draft(torch.tensor([prompt])).logits[0, -1], allowed), dim=-1).double()
    categories = int(allowed.sum())
    bound = math.sqrt((categories * math.log(2) + math.log(1 / FAILURE_PROBABILITY)) / (2 * SAMPLES))
    # A verifier that rubber-stamped the (masked) draft would be far outside the bound: the test can fail.
    assert 0.5 * float((drafts - exact).abs().sum()) > 3 * bound

    service = VerifierService(TargetRuntime(target), tokenizer=tokenizer, eos_ids=frozenset({eos}))
    server = RunningServer(service, ServerConfig(port=0))
    address = f"127.0.0.1:{server.port}"
    clients = [EdgeClient(address, DraftRuntime(draft), tokenizer=tokenizer), EdgeClient(address, DraftRuntime(draft))]
    firsts: Counter[int] = Counter()
    try:
        for seed in range(SAMPLES):
            config = GenerationConfig(
                max_new_tokens=2,
                gamma=2,
                sampling=SamplingParams(temperature=1.0),
                seed=seed,
                eos_ids=frozenset({eos}),
                grammar=grammar,
            )
            mode = (Mode.SD, Mode.SD_EE_PIPELINED)[seed % 2]
            firsts[clients[(seed // 2) % 2].generate(prompt, mode, config).tokens[0]] += 1
    finally:
        server.stop()
    assert set(firsts) <= set(allowed.nonzero().flatten().tolist())
    distance = 0.5 * sum(abs(firsts.get(token, 0) / SAMPLES - float(exact[token])) for token in range(len(exact)))
    assert distance <= bound, (distance, bound)
