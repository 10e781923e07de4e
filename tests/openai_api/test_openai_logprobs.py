"""Log-probabilities through the official `openai` client against a real edge-serve and a real
verifier (tiny models): in every mode with a target, chat's ``logprobs``/``top_logprobs`` and the
completions' ``logprobs`` are the target's own log-softmax at each emitted token, equal to
``generate(output_scores=True)`` within 1e-4 (fp32), streamed per chunk or whole; edge-only, which
has no target, and malformed requests get OpenAI-shaped 400s."""

from __future__ import annotations

from typing import Any, Iterator

import openai
import pytest
import torch

from edgespec.core.modes import Mode
from edgespec.exits.heads import ExitHeads, ExitSpec
from edgespec.models.target import TargetRuntime
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.cloud_draft import CloudDraft
from edgespec.server.servicer import VerifierService
from tests.openai_api.test_openai_api import (
    EOS,
    MAX_TOKENS,
    TARGET_NAME,
    EdgeServe,
    chat_prompt,
    edge_backend,
    target_model,
    tokenizer,
)
from tests.support.logprob_oracle import generate_with_logprobs
from tests.support.tiny_models import layer_skip_copy, tiny_model

TARGET_MODES = [Mode.CLOUD_AR, Mode.SD, Mode.SD_EE, Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED, Mode.CLOUD_SD]
TOP = 3
ATOL = 1e-4


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    """A verifier with exits (for the early-exit modes) and a cloud draft (for cloud-sd)."""
    model = tiny_model("qwen2", seed=0)
    exits = ExitHeads([ExitSpec(2), ExitSpec(3)], model.config.hidden_size)
    service = VerifierService(
        TargetRuntime(model, exits),
        tokenizer=None,
        eos_ids=EOS,
        target_name=TARGET_NAME,
        cloud_draft=CloudDraft(layer_skip_copy(tiny_model("qwen2", seed=0), keep=3)),
    )
    server = RunningServer(service, ServerConfig(port=0))
    yield f"127.0.0.1:{server.port}"
    server.stop()


@pytest.fixture(scope="module", params=TARGET_MODES, ids=lambda mode: mode.value)
def edge(request: Any, address: str) -> Iterator[EdgeServe]:
    serve = EdgeServe(edge_backend(address, slots=2, mode=request.param))
    yield serve
    serve.stop()


def oracle(prompt_ids: list[int]) -> tuple[list[int], torch.Tensor]:
    return generate_with_logprobs(target_model(), prompt_ids, MAX_TOKENS, eos=min(EOS))


def check_chat_entries(entries: list[Any], tokens: list[int], scores: torch.Tensor) -> None:
    assert len(entries) == len(tokens)
    for entry, token, row in zip(entries, tokens, scores):
        assert bytes(entry.bytes) == token_bytes(token)
        assert abs(entry.logprob - float(row[token])) <= ATOL
        best = torch.topk(row, TOP)
        assert [top.logprob for top in entry.top_logprobs] == pytest.approx(best.values.tolist(), abs=ATOL)
        assert [bytes(top.bytes) for top in entry.top_logprobs] == [token_bytes(t) for t in best.indices.tolist()]


def token_bytes(token: int) -> bytes:
    return tokenizer().decode([token]).encode()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_chat_logprobs_equal_generates_scores(edge: EdgeServe, stream: bool) -> None:
    content = "Write one short sentence about rivers."
    tokens, scores = oracle(chat_prompt(content))
    reply = edge.client().chat.completions.create(
        model=TARGET_NAME,
        messages=[{"role": "user", "content": content}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        logprobs=True,
        top_logprobs=TOP,
        stream=stream,
    )
    if stream:
        chunks = list(reply)
        choices = [choice for chunk in chunks for choice in chunk.choices if choice.logprobs]
        entries = [entry for choice in choices for entry in choice.logprobs.content]
        text_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
        assert all(c.choices[0].logprobs for c in text_chunks), "a text chunk without its tokens' logprobs"
    else:
        entries = reply.choices[0].logprobs.content
    check_chat_entries(entries, tokens, scores)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_completion_logprobs_equal_generates_scores(edge: EdgeServe, stream: bool) -> None:
    prompt = "The river"
    tokens, scores = oracle(tokenizer().encode(prompt))
    reply = edge.client().completions.create(
        model=TARGET_NAME,
        prompt=prompt,
        max_tokens=MAX_TOKENS,
        temperature=0,
        logprobs=TOP,
        stream=stream,
    )
    choices = [choice for chunk in reply for choice in chunk.choices] if stream else reply.choices
    token_logprobs = [value for choice in choices if choice.logprobs for value in choice.logprobs.token_logprobs]
    tops = [top for choice in choices if choice.logprobs for top in choice.logprobs.top_logprobs]
    offsets = [offset for choice in choices if choice.logprobs for offset in choice.logprobs.text_offset]
    assert token_logprobs == pytest.approx([float(row[t]) for row, t in zip(scores, tokens)], abs=ATOL)
    assert len(tokens) == len(token_logprobs) == len(tops) and all(len(top) <= TOP for top in tops)
    assert offsets == sorted(offsets) and offsets[0] == 0


def test_a_request_without_logprobs_gets_none(edge: EdgeServe) -> None:
    reply = edge.client().chat.completions.create(
        model=TARGET_NAME,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        temperature=0,
    )
    assert reply.choices[0].logprobs is None


@pytest.mark.parametrize(
    "params, param",
    [
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": 3}, "logprobs"),
    ],
)
def test_bad_logprob_requests_get_a_400_naming_them(edge: EdgeServe, params: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        edge.client().chat.completions.create(model=TARGET_NAME, messages=[{"role": "user", "content": "Hi"}], **params)
    assert caught.value.body["param"] == param and caught.value.body["type"] == "invalid_request_error"


def test_completion_logprobs_over_five_get_a_400(edge: EdgeServe) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        edge.client().completions.create(model=TARGET_NAME, prompt="Hi", logprobs=6)
    assert caught.value.body["param"] == "logprobs"


def test_edge_only_refuses_logprobs_it_has_no_target_for(address: str) -> None:
    serve = EdgeServe(edge_backend(address, slots=1, mode=Mode.EDGE_ONLY))
    try:
        with pytest.raises(openai.BadRequestError, match="edge-only"):
            serve.client().chat.completions.create(
                model=TARGET_NAME,
                messages=[{"role": "user", "content": "Hi"}],
                max_tokens=4,
                logprobs=True,
            )
    finally:
        serve.stop()
