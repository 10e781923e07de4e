"""`edgespec edge-serve` through the official `openai` client: a real FastAPI app under uvicorn on
loopback, a real verifier (`VerifierService` over gRPC) with tiny models and a tiny real
tokenizer. Greedy output equals `transformers` `generate` on the chat-templated prompt; stop
strings cut where cutting `generate`'s text would; bad parameters, a wrong key and an unreachable
cloud get OpenAI-shaped errors; a client that disconnects frees its cloud session; eight
concurrent streams each equal `generate`; an outage mid-stream is flagged in the final chunk."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from functools import lru_cache
from typing import Any, Iterator

import openai
import pytest
import uvicorn

from edgespec.client.edge_client import ClientOptions, EdgeClient
from edgespec.client.recovery import RecoveryPolicy
from edgespec.core.config import GenerationConfig, SamplingParams
from edgespec.core.modes import Mode
from edgespec.exits.heads import ExitHeads, ExitSpec
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from edgespec.openai_api.app import create_app
from edgespec.openai_api.backend import BackendSettings, EdgeBackend
from edgespec.prompting import render_prompt
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.servicer import VerifierService
from tests.support.chat_tokenizer import chat_tokenizer
from tests.support.tiny_models import greedy_reference, qwen2_layer_skip_draft, qwen2_target, tiny_model

API_KEY = "test-key-123"
TARGET_NAME = "tiny-qwen2"
MAX_TOKENS = 40


@lru_cache(maxsize=None)
def tokenizer() -> Any:
    return chat_tokenizer()


target_model = qwen2_target
draft_model = qwen2_layer_skip_draft


EOS = frozenset({chat_tokenizer().eos_token_id})


def expected(prompt_ids: list[int], max_tokens: int = MAX_TOKENS) -> tuple[str, list[int]]:
    """The oracle: `generate`'s greedy tokens, decoded as `edgespec generate` prints them."""
    tokens = greedy_reference(target_model(), prompt_ids, max_tokens, eos=min(EOS))
    return tokenizer().decode(tokens, skip_special_tokens=True), tokens


def chat_prompt(content: str) -> list[int]:
    return render_prompt(tokenizer(), content)  # what `edgespec generate "content"` sends


def finish_reason(tokens: list[int], max_tokens: int = MAX_TOKENS) -> str:
    return "stop" if tokens and tokens[-1] in EOS else "length"


class WatchedSessions(dict):  # type: ignore[type-arg]
    """The server's session table, telling a condition whenever a session opens or closes."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = threading.Condition()
        self.peak = 0

    def __setitem__(self, key: Any, value: Any) -> None:
        with self.changed:
            super().__setitem__(key, value)
            self.peak = max(self.peak, len(self))
            self.changed.notify_all()

    def pop(self, key: Any, *default: Any) -> Any:
        with self.changed:
            value = super().pop(key, *default)
            self.changed.notify_all()
            return value

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self), timeout)


class Verifier:
    """A real gRPC verifier with the tiny target and logit-lens exits at layers 2 and 3;
    ``delay_s`` slows every target forward (a big target, a loaded cloud)."""

    def __init__(self) -> None:
        model = tiny_model("qwen2", seed=0)
        self.delay_s = 0.0
        model.model.layers[-1].register_forward_hook(lambda *args: time.sleep(self.delay_s) if self.delay_s else None)
        exits = ExitHeads([ExitSpec(2), ExitSpec(3)], model.config.hidden_size)
        self.service = VerifierService(
            TargetRuntime(model, exits), tokenizer=None, eos_ids=EOS, target_name=TARGET_NAME
        )
        self.sessions = WatchedSessions()
        self.service.sessions = self.sessions
        self.server = RunningServer(self.service, ServerConfig(port=0))
        self.address = f"127.0.0.1:{self.server.port}"


class EdgeServe:
    """`create_app` under uvicorn on a free loopback port, in a thread. The socket is bound and
    listening before uvicorn starts, so clients may connect at once."""

    def __init__(self, backend: EdgeBackend, api_key: str | None = API_KEY, **app_options: Any) -> None:
        self.backend = backend
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        app = create_app(backend, api_key, **app_options)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True, name="edge-serve"
        )
        self.thread.start()

    def client(self, api_key: str = API_KEY, **options: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, **{"max_retries": 0, "timeout": 60, **options})

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def edge_backend(
    address: str, slots: int = 2, mode: Mode = Mode.SD_EE_PIPELINED, recovery: RecoveryPolicy = RecoveryPolicy()
) -> EdgeBackend:
    drafts = [DraftRuntime(draft_model()) for _ in range(slots)]  # shared weights, own KV caches
    options = ClientOptions(connect_timeout_s=5.0, recovery=recovery)
    return EdgeBackend(
        BackendSettings(address=address, mode=mode, options=options, gamma=3), tokenizer(), drafts, fallback_eos_ids=EOS
    )


@pytest.fixture(scope="module")
def edge(verifier: Verifier) -> Iterator[EdgeServe]:
    serve = EdgeServe(edge_backend(verifier.address, slots=8))
    yield serve
    serve.stop()


def raw(url: str, body: dict[str, Any] | None = None, api_key: str | None = API_KEY) -> tuple[int, dict[str, Any]]:
    """A plain HTTP request (no OpenAI client): status and JSON body."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def stream_text(stream: Any) -> tuple[str, list[Any]]:
    chunks = list(stream)
    pieces = []
    for chunk in chunks:
        for choice in chunk.choices:
            piece = choice.delta.content if hasattr(choice, "delta") else choice.text
            pieces.append(piece or "")
    return "".join(pieces), chunks


# ------------------------------------------------------------------ output equals generate


def test_models_names_the_verifiers_target(edge: EdgeServe) -> None:
    assert [model.id for model in edge.client().models.list().data] == [TARGET_NAME]


@pytest.mark.parametrize(
    "content", ["Hello there, what is the answer?", "Write a poem in four lines.", "Say something 52."]
)
def test_chat_completion_equals_generate(edge: EdgeServe, content: str) -> None:
    text, tokens = expected(chat_prompt(content))
    if content.endswith("52."):  # this one ends at EOS before max_tokens: finish_reason "stop"
        assert tokens[-1] in EOS and len(tokens) < MAX_TOKENS
    reply = edge.client().chat.completions.create(
        model=TARGET_NAME, messages=[{"role": "user", "content": content}], max_tokens=MAX_TOKENS, temperature=0
    )
    assert reply.choices[0].message.content == text
    assert reply.choices[0].finish_reason == finish_reason(tokens)
    assert reply.usage.prompt_tokens == len(chat_prompt(content))
    assert reply.usage.completion_tokens == len(tokens)
    info = reply.model_extra["edgespec"]
    assert info["mode"] == "sd-ee-pipelined" and info["lossless"] is True and info["fallback_spans"] == []
    assert info["rounds"] >= 1 and info["tokens_per_round"] == pytest.approx(len(tokens) / info["rounds"], abs=1e-3)


def test_streamed_chat_equals_generate_and_ends_with_stats_and_usage(edge: EdgeServe) -> None:
    content = "Hello there, what is the answer?"
    text, tokens = expected(chat_prompt(content))
    stream = edge.client().chat.completions.create(
        model=TARGET_NAME,
        messages=[{"role": "user", "content": content}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    streamed, chunks = stream_text(stream)
    assert streamed == text
    assert chunks[0].choices[0].delta.role == "assistant"
    final = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason][-1]
    assert final.choices[0].finish_reason == finish_reason(tokens)
    assert final.model_extra["edgespec"]["lossless"] is True
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(tokens)


def test_a_system_message_and_a_multi_turn_chat_use_the_template(edge: EdgeServe) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "And then?"},
    ]
    text, _ = expected(render_prompt(tokenizer(), messages))
    reply = edge.client().chat.completions.create(
        model=TARGET_NAME, messages=messages, max_tokens=MAX_TOKENS, temperature=0
    )
    assert reply.choices[0].message.content == text


@pytest.mark.parametrize("stream", [False, True])
def test_completion_equals_generate_on_the_raw_prompt(edge: EdgeServe, stream: bool) -> None:
    prompt = "Once upon a time, there"
    text, tokens = expected(render_prompt(tokenizer(), prompt, raw=True))
    reply = edge.client().completions.create(
        model=TARGET_NAME, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0, stream=stream
    )
    if stream:
        streamed, chunks = stream_text(reply)
        assert streamed == text
        assert chunks[-1].choices[0].finish_reason == finish_reason(tokens)
    else:
        assert reply.choices[0].text == text
        assert reply.usage.completion_tokens == len(tokens)


def test_a_seeded_sampled_request_is_the_edge_clients_seeded_generation(verifier: Verifier, edge: EdgeServe) -> None:
    content = "Hello there, what is the answer?"
    config = GenerationConfig(
        max_new_tokens=MAX_TOKENS, gamma=3, sampling=SamplingParams(temperature=0.8, top_p=0.9), seed=7, eos_ids=EOS
    )
    direct = EdgeClient(verifier.address, DraftRuntime(draft_model())).generate(
        chat_prompt(content), Mode.SD_EE_PIPELINED, config
    )
    replies = [
        edge.client()
        .chat.completions.create(
            model=TARGET_NAME,
            messages=[{"role": "user", "content": content}],
            max_tokens=MAX_TOKENS,
            temperature=0.8,
            top_p=0.9,
            seed=7,
        )
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert replies == [tokenizer().decode(direct.tokens, skip_special_tokens=True)] * 2
    assert replies[0] != expected(chat_prompt(content))[0]  # really sampled, not greedy


# ------------------------------------------------------------------ stop strings


def stops_inside(text: str) -> list[str]:
    """Stop strings taken from the expected text at several offsets: some end inside a token,
    some span the tokens of two rounds."""
    return [text[i : i + width] for i, width in ((2, 2), (5, 3), (9, 2), (14, 3), (20, 4)) if i + width <= len(text)]


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_cut_exactly_where_generates_text_would(edge: EdgeServe, stream: bool) -> None:
    content = "Write a poem in four lines."
    text, tokens = expected(chat_prompt(content))
    stops = stops_inside(text)
    assert len(stops) >= 4, "the expected text is too short to place stops in"
    client = edge.client()
    for stop in stops:
        cut = text[: text.find(stop)]
        # The tokens `generate` had produced when the stop string first appeared.
        needed = next(
            k for k in range(1, len(tokens) + 1) if stop in tokenizer().decode(tokens[:k], skip_special_tokens=True)
        )
        reply = client.chat.completions.create(
            model=TARGET_NAME,
            messages=[{"role": "user", "content": content}],
            max_tokens=MAX_TOKENS,
            temperature=0,
            stop=stop,
            stream=stream,
            **({"stream_options": {"include_usage": True}} if stream else {}),
        )
        if stream:
            got, chunks = stream_text(reply)
            reason = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1].choices[0].finish_reason
            usage = chunks[-1].usage
        else:
            got, reason, usage = reply.choices[0].message.content, reply.choices[0].finish_reason, reply.usage
        assert got == cut, f"stop {stop!r}"
        assert reason == "stop"
        if not stream:  # the statistics of the rounds run before the stop came through
            assert reply.model_extra["edgespec"]["rounds"] >= 1 and reply.model_extra["edgespec"]["lossless"] is True
        assert usage.completion_tokens == needed
    # Several stops: the earliest occurrence of any of them decides; one that never occurs is harmless.
    several = [stops[-1], stops[1], "QQQQQQ"]
    reply = client.chat.completions.create(
        model=TARGET_NAME,
        messages=[{"role": "user", "content": content}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        stop=several,
    )
    assert reply.choices[0].message.content == text[: min(text.find(s) for s in several if s in text)]


# ------------------------------------------------------------------ errors in OpenAI's shape


@pytest.mark.parametrize(
    "params, param",
    [
        ({"n": 17}, "n"),
        ({"logprobs": 3}, "logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"temperature": 3.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"extra_body": {"top_k": 5}}, "top_k"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
    ],
)
def test_unsupported_or_bad_parameters_get_a_400_naming_them(
    edge: EdgeServe, params: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        edge.client().chat.completions.create(model=TARGET_NAME, messages=[{"role": "user", "content": "Hi"}], **params)
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == param
    assert caught.value.body["type"] == "invalid_request_error" and caught.value.body["message"]


def test_completion_parameters_it_cannot_honour_get_a_400(edge: EdgeServe) -> None:
    for params, param in (({"echo": True}, "echo"), ({"best_of": 3}, "best_of"), ({"prompt": ["a", "b"]}, "prompt")):
        with pytest.raises(openai.BadRequestError) as caught:
            edge.client().completions.create(model=TARGET_NAME, **{"prompt": "Hi", **params})
        assert caught.value.body["param"] == param


def test_the_error_body_has_openais_exact_shape(edge: EdgeServe) -> None:
    status, body = raw(
        f"{edge.url}/v1/chat/completions",
        {"model": TARGET_NAME, "messages": [{"role": "user", "content": "Hi"}], "n": 17},
    )
    assert status == 400
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == "n" and error["code"] == "unsupported_parameter"
    image = [{"type": "image_url", "image_url": {"url": "data:,"}}]
    status, body = raw(
        f"{edge.url}/v1/chat/completions", {"model": TARGET_NAME, "messages": [{"role": "user", "content": image}]}
    )
    assert (
        status == 400 and body["error"]["param"] == "messages.0.content.0" and "image_url" in body["error"]["message"]
    )
    status, body = raw(f"{edge.url}/v1/nowhere")
    assert status == 404 and body["error"]["type"] == "invalid_request_error"


def test_a_wrong_or_missing_api_key_gets_a_401(edge: EdgeServe) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        edge.client(api_key="not-the-key").chat.completions.create(
            model=TARGET_NAME, messages=[{"role": "user", "content": "Hi"}]
        )
    assert caught.value.status_code == 401 and caught.value.body["code"] == "invalid_api_key"
    status, body = raw(f"{edge.url}/v1/models", api_key=None)
    assert status == 401 and set(body["error"]) == {"message", "type", "param", "code"}
    assert raw(f"{edge.url}/health", api_key=None)[1]["cloud"] == "reachable"  # /health needs no key


def test_an_unreachable_cloud_gets_a_503() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    serve = EdgeServe(edge_backend(dead, slots=1))
    try:
        with pytest.raises(openai.InternalServerError) as caught:
            serve.client().chat.completions.create(
                model=TARGET_NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0
            )
        assert caught.value.status_code == 503
        assert caught.value.body["code"] == "cloud_unreachable" and "unreachable" in caught.value.body["message"]
    finally:
        serve.stop()


# ------------------------------------------------------------------ sessions and concurrency


def test_a_client_that_disconnects_mid_stream_frees_its_cloud_session(verifier: Verifier, edge: EdgeServe) -> None:
    content = "Tell me story number 5."
    assert len(expected(chat_prompt(content), 300)[1]) == 300, "this prompt must not reach EOS early"
    # 0.1 s per target forward: 300 tokens take 7.5 s or more (at most 4 per round).
    verifier.delay_s = 0.1
    try:
        client = edge.client()
        stream = client.chat.completions.create(
            model=TARGET_NAME,
            messages=[{"role": "user", "content": content}],
            max_tokens=300,
            temperature=0,
            stream=True,
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break  # text is flowing: the session is open and generating
        assert verifier.sessions.wait_for(
            lambda sessions: len(sessions) == 1, timeout=4.0
        )  # earlier tests' sessions closed
        disconnected = time.monotonic()
        stream.close()
        client.close()
        assert verifier.sessions.wait_for(lambda sessions: len(sessions) == 0, timeout=3.0), (
            "the cloud session outlived its client"
        )
        assert time.monotonic() - disconnected < 3.0
        # Not streamed: a client that gives up waiting (its timeout) frees the session too.
        with pytest.raises(openai.APITimeoutError):
            edge.client(timeout=1.0).chat.completions.create(
                model=TARGET_NAME, messages=[{"role": "user", "content": content}], max_tokens=300, temperature=0
            )
        assert verifier.sessions.wait_for(lambda sessions: len(sessions) == 0, timeout=3.0), (
            "the cloud session outlived its client"
        )
    finally:
        verifier.delay_s = 0.0
    # The edge goes on serving after the cancelled generation.
    text, _ = expected(chat_prompt("Hi"), 8)
    assert (
        edge.client()
        .chat.completions.create(
            model=TARGET_NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0
        )
        .choices[0]
        .message.content
        == text
    )


def test_eight_concurrent_streams_each_get_their_own_session_and_equal_generate(
    verifier: Verifier, edge: EdgeServe
) -> None:
    contents = [f"Question {i}: how are you today?" for i in range(8)]
    wanted = [expected(chat_prompt(content), 32)[0] for content in contents]

    async def one(client: openai.AsyncOpenAI, content: str) -> str:
        stream = await client.chat.completions.create(
            model=TARGET_NAME,
            messages=[{"role": "user", "content": content}],
            max_tokens=32,
            temperature=0,
            stream=True,
        )
        return "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])

    async def all_at_once() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{edge.url}/v1", api_key=API_KEY, max_retries=0, timeout=60) as client:
            return await asyncio.gather(*(one(client, content) for content in contents))

    verifier.sessions.peak = 0
    verifier.delay_s = 0.02  # sessions last long enough to overlap on a busy machine
    try:
        got = asyncio.run(all_at_once())
    finally:
        verifier.delay_s = 0.0
    assert got == wanted
    assert verifier.sessions.peak > 1, "the requests never had cloud sessions open at the same time"
    assert verifier.sessions.wait_for(lambda sessions: len(sessions) == 0, timeout=4.0)


# ------------------------------------------------------------------ outage


def test_an_outage_mid_stream_falls_back_and_the_final_chunk_says_so() -> None:
    verifier = Verifier()
    verifier.delay_s = 0.05
    quick_giveup = RecoveryPolicy(
        retries=1, backoff_initial_s=0.05, backoff_max_s=0.05, outage_budget_s=2.0, probe_interval_s=30.0
    )
    serve = EdgeServe(edge_backend(verifier.address, slots=1, mode=Mode.SD, recovery=quick_giveup))
    try:
        stream = serve.client().chat.completions.create(
            model=TARGET_NAME,
            messages=[{"role": "user", "content": "Tell me a story."}],
            max_tokens=60,
            temperature=0,
            stream=True,
        )
        chunks = []
        for chunk in stream:
            chunks.append(chunk)
            if len(chunks) == 2:  # the opening chunk, then the first text: kill the cloud mid-stream
                verifier.server.stop()
        final = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason][-1]
        info = final.model_extra["edgespec"]
        assert info["lossless"] is False and info["fallback_tokens"] > 0
        assert info["connection_losses"] == 1 and info["fallback_spans"]
        start, end = info["fallback_spans"][0]
        assert 0 < start < end
    finally:
        serve.stop()
        verifier.server.stop()
