"""edge-serve under hostile and clumsy input, on loopback with the tiny verifier of the API tests:
oversized bodies and prompts, overflowing numbers, bad Unicode, slot exhaustion by refused
requests, slowloris connections. Each case checks the status, the error's OpenAI shape and
message, that the server still serves afterwards, and (where a request was big) that the
process's resident memory is back. Bounded: a few hundred requests, well under a minute."""

from __future__ import annotations

import gc
import http.client
import json
import socket
import threading
import time
import urllib.request
from typing import Any, Iterable, Iterator

import psutil
import pytest

from edgespec.openai_api.limits import RequestLimits
from tests.openai_api.test_openai_api import API_KEY, TARGET_NAME, EdgeServe, Verifier, edge_backend

BODY_LIMIT = 256 * 1024
BODY_TIMEOUT_S = 2.0
SLOTS = 2
# The tiny target's context window (512) less one new token: the verifier's effective prompt limit.
PROMPT_TOKEN_LIMIT = 511
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def edge(verifier: Verifier) -> Iterator[EdgeServe]:
    limits = RequestLimits(max_body_bytes=BODY_LIMIT, body_timeout_s=BODY_TIMEOUT_S)
    serve = EdgeServe(edge_backend(verifier.address, slots=SLOTS), limits=limits)
    yield serve
    serve.stop()


# ------------------------------------------------------------------ helpers


def post(
    edge: EdgeServe, path: str, body: bytes | Iterable[bytes], headers: dict[str, str] | None = None
) -> tuple[int, Any, float]:
    """POST raw bytes (an iterable is sent chunked, with no Content-Length): status, body, seconds."""
    host, port = edge.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    started = time.monotonic()
    try:
        connection.request(
            "POST",
            path,
            body=body,
            encode_chunked=not isinstance(body, bytes),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}", **(headers or {})},
        )
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    try:
        parsed: Any = json.loads(data)
    except ValueError:
        parsed = data
    return response.status, parsed, time.monotonic() - started


def chat(content: str, **params: Any) -> bytes:
    return json.dumps({"model": TARGET_NAME, "messages": [{"role": "user", "content": content}], **params}).encode()


def assert_refused(
    status: int, body: Any, expected: int, code: str | None = None, mentions: str = ""
) -> dict[str, Any]:
    """An error in OpenAI's exact shape with the expected status (never a 500)."""
    assert status == expected, (status, body)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    if code is not None:
        assert error["code"] == code, error
    assert mentions in error["message"], error
    return error


def assert_serves(edge: EdgeServe, verifier: Verifier) -> None:
    """A normal request still gets its answer, every slot is free again and no session is left."""
    reply = edge.client().chat.completions.create(
        model=TARGET_NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
    deadline = time.monotonic() + 5.0
    while edge.backend.free_slots < SLOTS and time.monotonic() < deadline:
        time.sleep(0.02)
    assert edge.backend.free_slots == SLOTS
    assert verifier.sessions.wait_for(lambda sessions: len(sessions) == 0, timeout=5.0)


def resident_bytes() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def oversized_body(size: int) -> bytes:
    return chat("a" * size)


# ------------------------------------------------------------------ oversized bodies and prompts


def test_a_20_mb_body_is_refused_within_a_second_and_leaves_no_memory(edge: EdgeServe, verifier: Verifier) -> None:
    post(edge, "/v1/chat/completions", oversized_body(2 * BODY_LIMIT))  # warm the refusal path
    before = resident_bytes()
    body = oversized_body(20 * MiB)
    status, reply, seconds = post(edge, "/v1/chat/completions", body)
    del body
    assert_refused(status, reply, 413, "request_too_large", mentions=str(BODY_LIMIT))
    assert seconds < 1.0
    assert resident_bytes() - before < 50 * MiB
    assert_serves(edge, verifier)


def test_a_chunked_body_without_a_length_is_cut_off_at_the_limit(edge: EdgeServe, verifier: Verifier) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(20 * MiB // 65536):
            yield b"a" * 65536
        yield b'"}]}'

    status, reply, seconds = post(edge, "/v1/chat/completions", chunks())
    assert_refused(status, reply, 413, "request_too_large")
    assert seconds < 2.0
    assert_serves(edge, verifier)


@pytest.mark.parametrize("characters", [3_000, 100_000, 200_000])
def test_a_prompt_over_the_verifiers_limit_is_a_400_before_any_session(
    edge: EdgeServe, verifier: Verifier, characters: int
) -> None:
    verifier.sessions.peak = 0
    status, reply, seconds = post(edge, "/v1/chat/completions", chat("word " * (characters // 5), max_tokens=4))
    error = assert_refused(status, reply, 400, "context_length_exceeded", mentions=str(PROMPT_TOKEN_LIMIT))
    assert error["param"] == "messages" and seconds < 1.0
    assert verifier.sessions.peak == 0, "a refused prompt opened a cloud session"
    assert_serves(edge, verifier)


def test_too_many_token_ids_through_completions_are_a_400_before_any_session(
    edge: EdgeServe, verifier: Verifier
) -> None:
    verifier.sessions.peak = 0
    body = json.dumps({"model": TARGET_NAME, "prompt": [5] * 8000, "max_tokens": 4}).encode()
    status, reply, seconds = post(edge, "/v1/completions", body)
    assert_refused(status, reply, 400, "context_length_exceeded", mentions="8000")
    assert seconds < 1.0 and verifier.sessions.peak == 0
    # A prompt that fits, but not with the new tokens asked for: the context window is named.
    body = json.dumps({"model": TARGET_NAME, "prompt": [5] * 500, "max_tokens": 100}).encode()
    assert_refused(
        *post(edge, "/v1/completions", body)[:2], 400, "context_length_exceeded", mentions="context window of 512"
    )


# ------------------------------------------------------------------ numbers


@pytest.mark.parametrize(
    "params, param, mentions",
    [
        ({"max_tokens": 2**63}, "max_tokens", "4096"),
        ({"max_tokens": 2**32 + 1}, "max_tokens", "4096"),
        ({"max_completion_tokens": 10**30}, "max_completion_tokens", "4096"),
        ({"max_tokens": -(2**63)}, "max_tokens", ""),
        ({"n": 2**70}, "n", ""),
        ({"top_logprobs": 2**64}, "top_logprobs", ""),
    ],
)
def test_overflowing_integers_are_a_400_naming_the_parameter(
    edge: EdgeServe, params: dict[str, Any], param: str, mentions: str
) -> None:
    status, reply, _ = post(edge, "/v1/chat/completions", chat("Hi", **params))
    assert assert_refused(status, reply, 400, mentions=mentions)["param"] == param


@pytest.mark.parametrize(
    "raw_value, param",
    [(b"NaN", "temperature"), (b"Infinity", "temperature"), (b"1e999", "top_p"), (b"-Infinity", "top_p")],
)
def test_non_finite_floats_are_a_400_that_says_so(edge: EdgeServe, raw_value: bytes, param: str) -> None:
    body = b'{"messages": [{"role": "user", "content": "Hi"}], "%s": %s}' % (param.encode(), raw_value)
    error = assert_refused(*post(edge, "/v1/chat/completions", body)[:2], 400)
    assert error["param"] == param and "finite" in error["message"]


def test_a_huge_seed_and_a_number_of_thousands_of_digits(edge: EdgeServe) -> None:
    status, reply, _ = post(edge, "/v1/chat/completions", chat("Hi", seed=2**200, max_tokens=2, temperature=0.5))
    assert status == 200 and reply["choices"][0]["message"]["content"] is not None
    digits = b'{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": ' + b"9" * 5000 + b"}"
    assert_refused(*post(edge, "/v1/chat/completions", digits)[:2], 400)


def test_a_stop_string_too_long_to_scan_cheaply_is_a_400(edge: EdgeServe) -> None:
    status, reply, _ = post(edge, "/v1/chat/completions", chat("Hi", stop=["x" * 100_000]))
    assert assert_refused(status, reply, 400, "invalid_value", mentions="1000")["param"] == "stop"


# ------------------------------------------------------------------ text and encodings


@pytest.mark.parametrize(
    "body, param",
    [
        (b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}', "messages.0.content"),
        (
            b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff x"}]}]}',
            "messages.0.content.0.text",
        ),
        (b'{"model": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "stop": ["\\ud83d"]}', "stop.0"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "\\ud800": 1}', "body"),
    ],
)
def test_a_lone_surrogate_is_a_400_naming_where_it_is(edge: EdgeServe, body: bytes, param: str) -> None:
    error = assert_refused(*post(edge, "/v1/chat/completions", body)[:2], 400, "invalid_value", mentions="surrogate")
    assert error["param"] == param


def test_a_lone_surrogate_in_a_raw_prompt_is_a_400(edge: EdgeServe) -> None:
    error = assert_refused(*post(edge, "/v1/completions", b'{"prompt": "once \\ud800 upon"}')[:2], 400, "invalid_value")
    assert error["param"] == "prompt"


@pytest.mark.parametrize(
    "body",
    [
        "\u0000nul inside\u0000".encode(),  # NUL characters: valid text
        "<|end|> a control token, spelled out".encode(),
        "caf\u00e9 \U0001f600 \u202e right-to-left".encode(),
    ],
)
def test_odd_but_valid_text_is_served(edge: EdgeServe, body: bytes) -> None:
    status, reply, _ = post(edge, "/v1/chat/completions", chat(body.decode(), max_tokens=3, temperature=0))
    assert status == 200, reply
    assert reply["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize(
    "body",
    [
        '{"messages": [{"role": "user", "content": "caf\u00e9"}]}'.encode("latin-1"),  # not UTF-8
        b'{"messages": [{"role": "user", "content": "\xff\xfe\xfd"}]}',
        b"\x00\x01\x02 binary",
        b'{"messages": [{"role": "user", "content": "unterminated',
        b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than any parser's recursion
    ],
)
def test_bytes_that_are_not_json_text_are_a_400(edge: EdgeServe, body: bytes) -> None:
    assert_refused(*post(edge, "/v1/chat/completions", body)[:2], 400)


def test_a_body_in_utf16_is_json_and_is_served(edge: EdgeServe) -> None:
    status, reply, _ = post(
        edge, "/v1/chat/completions", chat("Hi", max_tokens=2, temperature=0).decode().encode("utf-16")
    )
    assert status in (200, 400), reply
    if status == 400:
        assert_refused(status, reply, 400)


# ------------------------------------------------------------------ slots, memory, slow clients


def test_refused_requests_leave_every_slot_free_and_memory_back(edge: EdgeServe, verifier: Verifier) -> None:
    big_body = oversized_body(2 * MiB)
    long_prompt = chat("word " * 2_000, max_tokens=4)
    over_chars = chat("x" * 200_000, max_tokens=4)

    def refuse_all(rounds: int) -> None:
        for i in range(rounds):
            body = (big_body, long_prompt, over_chars)[i % 3]
            status, _, _ = post(edge, "/v1/chat/completions", body)
            assert status in (400, 413)

    refuse_all(12)  # first-time allocations are not a leak
    before = resident_bytes()
    verifier.sessions.peak = 0
    refuse_all(100)
    assert verifier.sessions.peak == 0
    assert edge.backend.free_slots == SLOTS
    after = resident_bytes()
    assert after < before * 1.10, f"resident memory grew from {before / MiB:.0f} to {after / MiB:.0f} MiB"
    assert_serves(edge, verifier)


def test_refused_requests_in_parallel_do_not_take_slots_from_a_running_one(edge: EdgeServe, verifier: Verifier) -> None:
    verifier.delay_s = 0.05  # the running generations last a few seconds
    results: list[int] = []
    try:
        streams = [
            edge.client().chat.completions.create(
                model=TARGET_NAME,
                messages=[{"role": "user", "content": f"Tell me story {i}."}],
                max_tokens=60,
                temperature=0,
                stream=True,
            )
            for i in range(SLOTS)
        ]
        firsts = [next(iter(stream)) for stream in streams]  # both slots are held now
        assert firsts and edge.backend.free_slots == 0

        def refuse() -> None:
            status, _, seconds = post(edge, "/v1/chat/completions", chat("word " * 2_000, max_tokens=4))
            results.append(status if seconds < 2.0 else -1)

        threads = [threading.Thread(target=refuse) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert results == [400] * 16, "a refusal waited for a slot"
        for stream in streams:
            stream.close()
    finally:
        verifier.delay_s = 0.0
    assert_serves(edge, verifier)


def test_slowloris_headers_do_not_stop_other_requests(edge: EdgeServe, verifier: Verifier) -> None:
    host, port = edge.url.removeprefix("http://").split(":")
    loris = []
    try:
        for _ in range(32):
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and never the rest
            loris.append(sock)
        started = time.monotonic()
        assert_serves(edge, verifier)
        assert time.monotonic() - started < 10.0
    finally:
        for sock in loris:
            sock.close()


def test_a_body_that_trickles_in_is_refused_after_the_body_timeout(edge: EdgeServe, verifier: Verifier) -> None:
    host, port = edge.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {API_KEY}\r\nContent-Length: 1000\r\n\r\n".encode()
            + b'{"messages": '
        )
        started = time.monotonic()
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert_refused(408, json.loads(body), 408, "request_timeout")
    assert BODY_TIMEOUT_S - 0.5 < time.monotonic() - started < BODY_TIMEOUT_S + 3.0
    assert_serves(edge, verifier)


# ------------------------------------------------------------------ the whole suite, from the metrics


def test_nothing_above_was_answered_with_a_500(edge: EdgeServe) -> None:
    with urllib.request.urlopen(f"{edge.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    answered = [line for line in text.splitlines() if line.startswith("edgespec_edge_requests_total{")]
    assert any('status="413"' in line for line in answered) and any('status="400"' in line for line in answered)
    assert not [line for line in answered if 'status="5' in line], answered
