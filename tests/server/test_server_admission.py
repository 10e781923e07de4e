"""Who gets a session (``admission.check_admission``), the prompt it asked for
(``requested_prompt``), and when it ends (``SessionClock``): each rule alone, no server needed."""

from __future__ import annotations

import time

import pytest

from edgespec.server.admission import SessionClock, check_admission, check_generation_fits, requested_prompt
from edgespec.server.limits import AdmissionLimits, SessionLimits
from edgespec.server.refusals import Refused
from edgespec.transport import edgespec_pb2 as pb
from edgespec.transport.codec import PROTOCOL_VERSION, ProtocolError

ADMISSION = AdmissionLimits(max_sessions=2)
LIMITS = SessionLimits(max_block=8, max_new_tokens=16)


def open_request(**fields: object) -> pb.Open:
    defaults: dict[str, object] = {"protocol_version": PROTOCOL_VERSION, "kind": pb.SPECULATIVE, "max_new_tokens": 4}
    return pb.Open(**{**defaults, **fields})


def refusal(request: pb.Open, open_sessions: int = 0, has_cloud_draft: bool = False) -> int | None:
    try:
        check_admission(request, open_sessions, ADMISSION, LIMITS, has_cloud_draft)
    except ProtocolError as error:
        return error.code
    return None


def test_a_well_formed_open_is_admitted_in_every_served_kind() -> None:
    assert refusal(open_request()) is None
    assert refusal(open_request(kind=pb.CLOUD_AR)) is None
    assert refusal(open_request(kind=pb.CLOUD_SD, gamma=8, max_gamma=8), has_cloud_draft=True) is None


def test_one_session_past_the_limit_is_refused_busy() -> None:
    assert refusal(open_request(), open_sessions=1) is None
    assert refusal(open_request(), open_sessions=2) == pb.BUSY


def test_busy_is_decided_before_the_version_is_read() -> None:
    assert refusal(open_request(protocol_version=PROTOCOL_VERSION + 1), open_sessions=2) == pb.BUSY


def test_another_protocol_version_is_refused_as_unsupported() -> None:
    assert refusal(open_request(protocol_version=PROTOCOL_VERSION + 1)) == pb.UNSUPPORTED_VERSION


def test_an_unknown_session_kind_is_a_bad_request() -> None:
    assert refusal(open_request(kind=max(pb.SessionKind.values()) + 1)) == pb.BAD_REQUEST


def test_cloud_sd_needs_a_server_draft_and_blocks_within_the_limit() -> None:
    assert refusal(open_request(kind=pb.CLOUD_SD)) == pb.BAD_REQUEST
    assert refusal(open_request(kind=pb.CLOUD_SD, gamma=9), has_cloud_draft=True) == pb.TOO_LARGE
    assert refusal(open_request(kind=pb.CLOUD_SD, max_gamma=9), has_cloud_draft=True) == pb.TOO_LARGE


def test_the_requests_own_bounds_are_checked_last() -> None:
    assert refusal(open_request(draft_stop=1.0)) == pb.BAD_REQUEST
    assert refusal(open_request(committed_ids=[1] * 5)) == pb.TOO_LARGE


def test_the_prompt_is_its_ids_or_its_rendered_messages_never_both() -> None:
    assert requested_prompt(pb.Open(prompt_ids=[5, 6, 7]), tokenizer=None) == [5, 6, 7]
    with pytest.raises(ProtocolError) as both:
        requested_prompt(pb.Open(prompt_ids=[5], messages=[pb.ChatMessage(role="user", content="hi")]), None)
    assert both.value.code == pb.BAD_REQUEST


def test_messages_the_tokenizer_cannot_render_are_a_bad_request() -> None:
    with pytest.raises(ProtocolError) as unrenderable:
        requested_prompt(pb.Open(messages=[pb.ChatMessage(role="user", content="hi")]), tokenizer=object())
    assert unrenderable.value.code == pb.BAD_REQUEST and "cannot render" in str(unrenderable.value)


def test_the_read_timeout_is_the_idle_timeout_until_the_lifetime_is_nearer() -> None:
    limits = SessionLimits(idle_timeout_s=10.0, max_lifetime_s=100.0)
    assert SessionClock(limits).read_timeout() == pytest.approx(10.0, abs=0.5)
    assert SessionClock(limits, opened_at=time.monotonic() - 95.0).read_timeout() == pytest.approx(5.0, abs=0.5)
    assert SessionClock(limits, opened_at=time.monotonic() - 200.0).read_timeout() == 0.0


def test_an_expired_session_is_told_whether_it_idled_or_lived_out() -> None:
    limits = SessionLimits(idle_timeout_s=10.0, max_lifetime_s=100.0)
    young, old = SessionClock(limits), SessionClock(limits, opened_at=time.monotonic() - 100.0)
    assert young.expired().code == old.expired().code == pb.EXPIRED
    assert "no message for 10 s" in str(young.expired())
    assert "maximum lifetime of 100 s" in str(old.expired())
    young.check_alive()
    with pytest.raises(ProtocolError):
        old.check_alive()


class SmallTarget:
    """What the generation checks read of a target: its vocabulary and its context."""

    vocab_size = 10
    context = 20

    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        if prompt_tokens + max_new_tokens > self.context:
            raise ValueError(f"{prompt_tokens} + {max_new_tokens} tokens exceed the context of {self.context}")


def generation_refusal(prompt: list[int], committed: list[int] = [], max_new_tokens: int = 4) -> str | None:
    limits = SessionLimits(max_prompt_tokens=8, max_new_tokens=16)
    try:
        check_generation_fits(SmallTarget(), prompt, committed, max_new_tokens, limits)  # type: ignore[arg-type]
    except Refused as refused:
        return refused.code
    return None


def test_a_generation_within_the_limits_and_the_model_fits() -> None:
    assert generation_refusal([1, 2, 3], committed=[4]) is None


def test_an_empty_prompt_is_a_bad_request_and_an_oversize_one_too_large() -> None:
    assert generation_refusal([]) == "BAD_REQUEST"
    assert generation_refusal([1] * 9) == "TOO_LARGE"


def test_a_budget_of_zero_is_a_bad_request_not_too_large() -> None:
    assert generation_refusal([1], max_new_tokens=0) == "BAD_REQUEST"


def test_a_budget_outside_the_limit_or_the_context_is_too_large() -> None:
    assert generation_refusal([1], max_new_tokens=17) == "TOO_LARGE"
    assert generation_refusal([1] * 4, max_new_tokens=16) is None  # 20: the whole context
    assert generation_refusal([1] * 5, max_new_tokens=16) == "TOO_LARGE"  # within the limits, past the context


def test_an_id_outside_the_vocabulary_is_refused_in_the_prompt_or_the_committed_text() -> None:
    assert generation_refusal([1, 10]) == "OUT_OF_VOCABULARY"
    assert generation_refusal([1], committed=[10]) == "OUT_OF_VOCABULARY"
