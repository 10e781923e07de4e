"""``n`` choices and ``seed`` through the official `openai` client against a real edge-serve and
verifier (tiny models): n independent choices in one response, streamed or whole; a seeded request
is reproducible choice by choice, its first choice is the plain seeded request, and each choice is
the edge client's seeded generation with that choice's seed; greedy choices all equal `generate`."""

from __future__ import annotations

from typing import Any, Iterator

import openai
import pytest

from edgespec.client.edge_client import EdgeClient
from edgespec.core.config import GenerationConfig, SamplingParams
from edgespec.core.modes import Mode
from edgespec.models.draft import DraftRuntime
from edgespec.openai_api.choices import choice_seeds
from tests.openai_api.test_openai_api import (
    EOS,
    MAX_TOKENS,
    TARGET_NAME,
    EdgeServe,
    Verifier,
    chat_prompt,
    draft_model,
    edge_backend,
    expected,
    tokenizer,
)

CONTENT = "Tell me a short story about a cat."


@pytest.fixture(scope="module")
def edge(verifier: Verifier) -> Iterator[EdgeServe]:
    serve = EdgeServe(edge_backend(verifier.address, slots=2))  # fewer slots than choices: later ones wait
    yield serve
    serve.stop()


def sampled_chat(edge: EdgeServe, n: int, seed: int | None, stream: bool = False, **extra: Any) -> list[str]:
    reply = edge.client().chat.completions.create(
        model=TARGET_NAME,
        messages=[{"role": "user", "content": CONTENT}],
        max_tokens=MAX_TOKENS,
        temperature=1.0,
        seed=seed,
        n=n,
        stream=stream,
        **extra,
    )
    if not stream:
        assert [choice.index for choice in reply.choices] == list(range(n))
        return [choice.message.content for choice in reply.choices]
    texts = [""] * n
    for chunk in reply:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    return texts


def test_n_seeded_choices_are_reproducible_and_differ(edge: EdgeServe) -> None:
    first = sampled_chat(edge, n=3, seed=42)
    assert sampled_chat(edge, n=3, seed=42) == first
    assert len(set(first)) == 3, "three seeded choices should not all coincide"


def test_streamed_choices_equal_the_whole_ones(edge: EdgeServe) -> None:
    assert sampled_chat(edge, n=3, seed=5, stream=True) == sampled_chat(edge, n=3, seed=5)


def test_the_first_choice_is_the_plain_seeded_request(edge: EdgeServe) -> None:
    assert sampled_chat(edge, n=2, seed=9)[0] == sampled_chat(edge, n=1, seed=9)[0]


def test_each_choice_is_the_edge_clients_generation_with_its_seed(verifier: Verifier, edge: EdgeServe) -> None:
    texts = sampled_chat(edge, n=2, seed=123)
    for text, seed in zip(texts, choice_seeds(123, 2)):
        assert seed is not None
        config = GenerationConfig(
            max_new_tokens=MAX_TOKENS,
            gamma=3,
            sampling=SamplingParams(temperature=1.0),
            seed=seed,
            eos_ids=EOS,
        )
        edge_client = EdgeClient(verifier.address, DraftRuntime(draft_model()))
        direct = edge_client.generate(chat_prompt(CONTENT), Mode.SD_EE_PIPELINED, config)
        assert text == tokenizer().decode(direct.tokens, skip_special_tokens=True)


def test_greedy_choices_all_equal_generate_and_usage_counts_them_all(edge: EdgeServe) -> None:
    text, tokens = expected(chat_prompt(CONTENT))
    reply = edge.client().chat.completions.create(
        model=TARGET_NAME,
        messages=[{"role": "user", "content": CONTENT}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        n=3,
    )
    assert [choice.message.content for choice in reply.choices] == [text] * 3
    assert reply.usage.completion_tokens == 3 * len(tokens)
    assert reply.usage.prompt_tokens == len(chat_prompt(CONTENT))


@pytest.mark.parametrize("stream", [False, True])
def test_completions_give_n_choices(edge: EdgeServe, stream: bool) -> None:
    reply = edge.client().completions.create(
        model=TARGET_NAME,
        prompt="Once",
        max_tokens=12,
        temperature=1.0,
        seed=3,
        n=2,
        stream=stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
    )
    chunks = list(reply) if stream else [reply]
    texts = ["", ""]
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    finals = [choice for chunk in chunks for choice in chunk.choices if choice.finish_reason]
    assert sorted(choice.index for choice in finals) == [0, 1]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert all(texts)


@pytest.mark.parametrize("n", [0, 17])
def test_n_out_of_range_gets_a_400(edge: EdgeServe, n: int) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        edge.client().chat.completions.create(model=TARGET_NAME, messages=[{"role": "user", "content": "Hi"}], n=n)
    assert caught.value.body["param"] == "n"
