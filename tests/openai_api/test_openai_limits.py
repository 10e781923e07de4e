"""edge-serve's limit arithmetic and its mapping of cloud refusals to HTTP statuses, without a server."""

from __future__ import annotations

import pytest

from edgespec.client.edge_client import ServerError
from edgespec.openai_api.cloud_errors import as_openai_error
from edgespec.openai_api.errors import InvalidText, OpenAIError
from edgespec.openai_api.limits import (
    PromptLimits,
    check_max_tokens,
    check_prompt_chars,
    check_prompt_tokens,
    default_max_tokens,
    draft_context_tokens,
)
from edgespec.openai_api.metrics import outcome_of
from edgespec.openai_api.schemas import check_unicode

LIMITS = PromptLimits(
    max_prompt_tokens=1000, max_new_tokens=200, context_tokens=1100, max_message_bytes=4 * 1024 * 1024
)


@pytest.mark.parametrize(
    "code, status, kind",
    [
        ("TOO_LARGE", 400, "too_large"),
        ("OUT_OF_VOCABULARY", 400, "out_of_vocabulary"),
        ("RESOURCE_EXHAUSTED", 400, "request_too_large"),
        ("BUSY", 429, "cloud_busy"),
        ("UNAUTHENTICATED", 503, "cloud_refused"),
        ("UNSUPPORTED_VERSION", 503, "cloud_refused"),
        ("INTERNAL", 503, "cloud_refused"),
    ],
)
def test_cloud_refusals_map_to_400_429_or_503(code: str, status: int, kind: str) -> None:
    error = as_openai_error(ServerError(code, "because"), "cloud:1")
    assert (error.status, error.code) == (status, kind)
    assert "because" in error.message


def test_an_unexpected_failure_is_a_500_that_leaks_no_detail() -> None:
    error = as_openai_error(RuntimeError("secret path /x/y"), "cloud:1")
    assert error.status == 500 and "secret" not in error.message


def test_the_prompt_token_limit_is_the_tightest_of_prompt_context_and_wire() -> None:
    assert LIMITS.prompt_token_limit == 1000
    assert PromptLimits(1000, 200, 600, 4 * 1024 * 1024).prompt_token_limit == 599
    assert PromptLimits(10**6, 200, 0, 100 * 1024).prompt_token_limit == (100 * 1024 - 1024) // 5
    assert LIMITS.capped(500).prompt_token_limit == 500 and LIMITS.capped(5000) is LIMITS


def test_characters_that_cannot_fit_are_refused_before_tokenizing() -> None:
    check_prompt_chars(1000 * 7, LIMITS, longest_token=7, param="messages")
    with pytest.raises(OpenAIError) as caught:
        check_prompt_chars(1000 * 7 + 1, LIMITS, longest_token=7, param="messages")
    assert caught.value.code == "context_length_exceeded" and "1000" in caught.value.message


def test_tokens_are_checked_against_the_prompt_limit_and_the_context_window() -> None:
    check_prompt_tokens(1000, 100, LIMITS, "prompt")
    for prompt_tokens, max_tokens in ((1001, 1), (1000, 101)):
        with pytest.raises(OpenAIError) as caught:
            check_prompt_tokens(prompt_tokens, max_tokens, LIMITS, "prompt")
        assert caught.value.status == 400 and caught.value.param == "prompt"


def test_max_tokens_over_the_verifiers_limit_names_it() -> None:
    check_max_tokens(200, LIMITS, "max_tokens")
    with pytest.raises(OpenAIError) as caught:
        check_max_tokens(2**63, LIMITS, "max_tokens")
    assert "200" in caught.value.message and caught.value.param == "max_tokens"


def test_a_request_without_max_tokens_gets_what_still_fits() -> None:
    assert default_max_tokens(256, 10, LIMITS) == 200
    assert default_max_tokens(256, 1050, LIMITS) == 50
    assert default_max_tokens(64, 10, PromptLimits(1000, 200, 0, 1 << 22)) == 64


def test_lone_surrogates_are_found_wherever_they_are() -> None:
    check_unicode({"a": ["fine", {"b": "caf\u00e9 \U0001f600"}]})
    for body, path in (({"a": ["x", "\ud800"]}, "a.1"), ({"\udc00": 1}, "body"), ("\ud800", "body")):
        with pytest.raises(InvalidText) as caught:
            check_unicode(body)
        assert caught.value.path == path


def test_an_error_message_quoting_a_surrogate_can_still_be_sent() -> None:
    error = OpenAIError(400, "bad \ud800", param="\udc00")
    assert error.response().body.decode("utf-8") and "\\ud800" in error.message


@pytest.mark.parametrize(
    "status, outcome", [(200, "ok"), (400, "refused"), (413, "refused"), (499, "cancelled"), (503, "failed")]
)
def test_outcomes_of_statuses(status: int, outcome: str) -> None:
    assert outcome_of(status) == outcome


def test_a_llamacpp_drafts_context_bounds_prompt_and_new_tokens() -> None:
    class LlamaCppLike:
        n_ctx = 4096

    assert draft_context_tokens(LlamaCppLike(), max_gamma=8) == 4087
    assert draft_context_tokens(object(), max_gamma=8) is None  # transformers: no hard window
    inside = PromptLimits(8192, 4096, 0, 1 << 22).within_context(4087)
    assert inside.context_tokens == 4087 and inside.prompt_token_limit == 4086
    assert LIMITS.within_context(None) is LIMITS and LIMITS.within_context(5000) is LIMITS
