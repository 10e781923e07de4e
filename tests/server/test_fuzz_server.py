"""Fuzz one real server (tiny target, loopback) with well over a thousand malformed streams: random
bytes no ClientMessage decodes from, and well-formed messages with one hostile value each. Every
stream must end in exactly one error with the code its fault calls for, never INTERNAL; the server
stays up; a greedy session opened before the fuzz and advanced all through it still equals
`generate`."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edgespec.client.edge_client import EdgeClient
from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.exits.heads import ExitHeads, ExitSpec
from edgespec.models.target import TargetRuntime
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.limits import SessionLimits
from edgespec.server.servicer import VerifierService
from edgespec.transport import edgespec_pb2 as pb
from tests.support.tiny_models import VOCAB, greedy_reference, tiny_model
from tests.support.wire import GreedySession, RawSession, block_message, drafts_from, open_message

LIMITS = SessionLimits(max_prompt_tokens=32, max_new_tokens=256, max_block=4)
EXAMPLES = 1200
GOOD_PROMPT = [3, 17, 42, 8, 9, 61]
GOOD_TOKENS = 200
STEP_EVERY = 12  # fuzz streams per round of the well-formed session (about 130 rounds): it spans the whole fuzz

ids = st.integers(0, VOCAB - 1)
out_of_vocab = st.integers(VOCAB, 2**32 - 1)
prompts = st.lists(ids, min_size=1, max_size=LIMITS.max_prompt_tokens)
sampled = st.builds(
    pb.Sampling,
    temperature=st.sampled_from([0.5, 1.0, 1.5]),
    top_k=st.integers(0, 200),
    top_p=st.sampled_from([0.0, 0.5, 1.0]),
)
greedy = st.just(pb.Sampling())


@dataclass
class Case:
    kind: str  # what is wrong, for the coverage count
    messages: list[pb.ClientMessage] | list[bytes]
    code: str  # the error it must get


# ---------------------------------------------------------------- well-formed parts


@st.composite
def valid_open(
    draw: Callable, sampling: st.SearchStrategy = st.one_of(greedy, sampled), max_new: int | None = None
) -> pb.ClientMessage:
    return open_message(
        draw(prompts),
        max_new if max_new is not None else draw(st.integers(1, LIMITS.max_new_tokens)),
        sampling=draw(sampling),
        seed=draw(st.integers(0, 2**64 - 1)),
        early_verdicts=draw(st.booleans()),
    )


@st.composite
def distribution_for(draw: Callable, token: int) -> pb.SparseDistribution:
    support = sorted(draw(st.sets(ids, max_size=6)) | {token})
    return pb.SparseDistribution(ids=support, probs=[1.0 / len(support)] * len(support))


@st.composite
def valid_block(draw: Callable, sampling: bool, round_index: int = 0) -> pb.ClientMessage:
    tokens = draw(st.lists(ids, min_size=1, max_size=LIMITS.max_block))
    probs = [draw(distribution_for(token)) for token in tokens] if sampling else []
    return block_message(round_index, tokens, probs=probs)


# ---------------------------------------------------------------- one fault each


def case(kind: str, code: str, strategy: st.SearchStrategy) -> st.SearchStrategy[Case]:
    return strategy.map(lambda messages: Case(kind, messages, code))


def with_open(field: str, values: st.SearchStrategy) -> st.SearchStrategy[list[pb.ClientMessage]]:
    """A valid open with one field replaced."""

    def replace(message: pb.ClientMessage, value: object) -> list[pb.ClientMessage]:
        broken = pb.ClientMessage()
        broken.CopyFrom(message)
        if isinstance(value, pb.Sampling):
            broken.open.sampling.CopyFrom(value)
        elif isinstance(value, list):
            del getattr(broken.open, field)[:]
            getattr(broken.open, field).extend(value)
        else:
            setattr(broken.open, field, value)
        return [broken]

    return st.tuples(valid_open(), values).map(lambda pair: replace(*pair))


@st.composite
def with_one_oov(draw: Callable, size: st.SearchStrategy[int]) -> list[int]:
    count = draw(size)
    values = draw(st.lists(ids, min_size=count, max_size=count))
    values.insert(draw(st.integers(0, len(values))), draw(out_of_vocab))
    return values


@st.composite
def committed_too_long(draw: Callable) -> list[pb.ClientMessage]:
    max_new = draw(st.integers(1, 40))
    committed = draw(st.lists(ids, min_size=max_new + 1, max_size=max_new + 40))
    return [open_message(draw(prompts), max_new, committed_ids=committed)]


@st.composite
def committed_out_of_vocabulary(draw: Callable) -> list[pb.ClientMessage]:
    committed = draw(with_one_oov(st.integers(0, 5)))
    return [
        open_message(draw(prompts), draw(st.integers(len(committed), LIMITS.max_new_tokens)), committed_ids=committed)
    ]


bad_temperature = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.floats(min_value=-1e30, max_value=-1e-6),
    st.floats(min_value=1e-30, max_value=5e-4),
    st.floats(min_value=101.0, max_value=1e30),
).map(lambda t: pb.Sampling(temperature=t))
bad_top_p = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.floats(min_value=-1e30, max_value=-1e-6),
    st.floats(min_value=1.001, max_value=1e30),
).map(lambda p: pb.Sampling(temperature=1.0, top_p=p))
chat = st.lists(
    st.builds(pb.ChatMessage, role=st.sampled_from(["user", "system", ""]), content=st.text(max_size=40)),
    min_size=1,
    max_size=3,
)

open_faults = st.one_of(
    case(
        "version",
        "UNSUPPORTED_VERSION",
        with_open("protocol_version", st.integers(0, 2**32 - 1).filter(lambda v: v != 1)),
    ),
    case("kind", "BAD_REQUEST", with_open("kind", st.integers(-(2**31), 2**31 - 1).filter(lambda k: k not in (1, 2)))),
    case("empty prompt", "BAD_REQUEST", with_open("prompt_ids", st.just([]))),
    case(
        "long prompt",
        "TOO_LARGE",
        with_open("prompt_ids", st.lists(ids, min_size=LIMITS.max_prompt_tokens + 1, max_size=400)),
    ),
    case("prompt oov", "OUT_OF_VOCABULARY", with_open("prompt_ids", with_one_oov(st.integers(0, 10)))),
    case("zero max_new_tokens", "BAD_REQUEST", with_open("max_new_tokens", st.just(0))),
    case(
        "max_new_tokens",
        "TOO_LARGE",
        with_open("max_new_tokens", st.integers(LIMITS.max_new_tokens + 1, 2**32 - 1)),
    ),
    case("committed too long", "TOO_LARGE", committed_too_long()),
    case("committed oov", "OUT_OF_VOCABULARY", committed_out_of_vocabulary()),
    case("temperature", "BAD_REQUEST", with_open("sampling", bad_temperature)),
    case("top_p", "BAD_REQUEST", with_open("sampling", bad_top_p)),
    case(
        "chat without tokenizer",
        "BAD_REQUEST",
        chat.map(
            lambda m: [
                pb.ClientMessage(open=pb.Open(protocol_version=1, kind=pb.SPECULATIVE, max_new_tokens=4, messages=m))
            ]
        ),
    ),
    case("prompt and chat", "BAD_REQUEST", with_open("messages", chat)),
)

any_message = st.one_of(valid_open(), valid_block(False), st.just(pb.ClientMessage()))
order_faults = st.one_of(
    case("block first", "BAD_REQUEST", st.one_of(valid_block(False), valid_block(True)).map(lambda b: [b])),
    case("close first", "BAD_REQUEST", st.just([pb.ClientMessage(close=pb.Close())])),
    case("empty message", "BAD_REQUEST", st.just([pb.ClientMessage()])),
    case("empty after open", "BAD_REQUEST", valid_open().map(lambda o: [o, pb.ClientMessage()])),
    case(
        "double open",
        "BAD_REQUEST",
        st.tuples(
            valid_open(), st.one_of(valid_open(), with_open("protocol_version", st.just(7)).map(lambda m: m[0]))
        ).map(list),
    ),
    case(
        "wrong round",
        "OUT_OF_ORDER",
        st.tuples(valid_open(greedy), st.integers(1, 2**32 - 1), valid_block(False)).map(
            lambda t: [t[0], block_message(t[1], list(t[2].block.tokens))]
        ),
    ),
    case(
        "after finish",
        "OUT_OF_ORDER",
        st.tuples(valid_open(greedy, max_new=1), valid_block(False), valid_block(False, round_index=1)).map(list),
    ),
    case(
        "replayed round",
        "OUT_OF_ORDER",
        st.tuples(valid_open(greedy), valid_block(False)).map(lambda t: [t[0], t[1], t[1]]),
    ),
)


@st.composite
def bad_block(draw: Callable) -> Case:
    sampling = draw(st.booleans())
    opening = draw(valid_open(sampled if sampling else greedy))
    block = draw(valid_block(sampling)).block
    fault = draw(
        st.sampled_from(
            ["empty", "too long", "oov"]
            + (["row count", "row shape", "row oov", "row twice", "row values"] if sampling else ["rows on greedy"])
        )
    )
    code = "BAD_REQUEST"
    if fault == "empty":
        del block.tokens[:]
        del block.probs[:]
    elif fault == "too long":
        block.tokens.extend(draw(st.lists(ids, min_size=LIMITS.max_block, max_size=300)))
        code = "TOO_LARGE"
    elif fault == "oov":
        block.tokens[draw(st.integers(0, len(block.tokens) - 1))] = draw(out_of_vocab)
        code = "OUT_OF_VOCABULARY"
    elif fault == "rows on greedy":
        block.probs.append(draw(distribution_for(block.tokens[0])))
    elif fault == "row count":
        if draw(st.booleans()) or len(block.probs) == 1:
            block.probs.append(draw(distribution_for(block.tokens[0])))
        else:
            del block.probs[-1]
    else:
        row = block.probs[draw(st.integers(0, len(block.probs) - 1))]
        if fault == "row shape" and draw(st.booleans()):
            row.probs.append(0.0)
        elif fault == "row shape":
            del row.ids[:]
            del row.probs[:]
        elif fault == "row oov":
            row.ids[0] = draw(out_of_vocab)
            code = "OUT_OF_VOCABULARY"
        elif fault == "row twice":
            row.ids.append(row.ids[0])
            row.probs[:] = [1.0 / len(row.ids)] * len(row.ids)
        else:
            row.probs[0] = draw(
                st.one_of(
                    st.sampled_from([math.nan, math.inf, -1.0]),
                    st.floats(min_value=1.5, max_value=1e30),
                    st.floats(max_value=-1e-3, min_value=-1e30),
                )
            )
    if draw(st.booleans()):  # a tagged pre-draft is checked before its assumption is judged
        block.assumes.CopyFrom(
            pb.Assumption(round=draw(st.integers(0, 3)), accepted=draw(st.integers(0, 4)), next_token=draw(ids))
        )
    return Case(f"block: {fault}", [opening, pb.ClientMessage(block=block)], code)


@st.composite
def raw_bytes(draw: Callable) -> Case:
    payload = draw(st.binary(max_size=300))
    try:
        message = pb.ClientMessage.FromString(payload)
    except DecodeError:
        after_open = draw(st.booleans())
        prefix = [draw(valid_open()).SerializeToString()] if after_open else []
        return Case("undecodable bytes" + (" after open" if after_open else ""), prefix + [payload], "BAD_REQUEST")
    kind = message.WhichOneof("kind")
    # Bytes that happen to decode: their fault is what they decode to (a valid open is no fault).
    assume(not (kind == "open" and message.open.protocol_version == 1))
    return Case("decodable bytes", [payload], "UNSUPPORTED_VERSION" if kind == "open" else "BAD_REQUEST")


# A family first, then a fault: a flat one_of would give each family weight by its branch count.
FAMILIES = {"bytes": raw_bytes(), "open": open_faults, "order": order_faults, "block": bad_block()}
fuzz_cases = st.sampled_from(sorted(FAMILIES)).flatmap(FAMILIES.__getitem__)


# ---------------------------------------------------------------- the server under fuzz


@pytest.fixture(scope="module")
def served():
    model = tiny_model("qwen2", seed=0)
    exits = ExitHeads([ExitSpec(2)], model.config.hidden_size)
    service = VerifierService(TargetRuntime(model, exits), tokenizer=None, eos_ids=frozenset(), limits=LIMITS)
    server = RunningServer(service, ServerConfig(port=0, limits=LIMITS))
    yield server
    server.stop()


def replies_to(channel: grpc.Channel, raw: grpc.StreamStreamMultiCallable, messages: list) -> list[pb.ServerMessage]:
    if messages and isinstance(messages[0], bytes):
        return list(raw(iter(messages), timeout=30))
    stream = RawSession(channel, timeout_s=30)
    for message in messages:
        stream.send(message)
    return stream.rest()


def test_every_malformed_stream_gets_its_error_and_a_concurrent_session_is_untouched(served) -> None:
    reference = greedy_reference(tiny_model("qwen2", seed=0), GOOD_PROMPT, GOOD_TOKENS)
    seen: Counter[str] = Counter()
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        raw = channel.stream_stream(
            "/edgespec.v1.Verifier/Session", request_serializer=None, response_deserializer=pb.ServerMessage.FromString
        )
        good = GreedySession(channel, GOOD_PROMPT, GOOD_TOKENS)

        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(fuzz_case=fuzz_cases)
        def fuzz(fuzz_case: Case) -> None:
            replies = replies_to(channel, raw, fuzz_case.messages)
            kinds = [reply.WhichOneof("kind") for reply in replies]
            assert kinds and kinds[-1] == "error", f"{fuzz_case.kind}: no error, got {kinds}"
            assert "error" not in kinds[:-1] and set(kinds[:-1]) <= {"opened", "early", "final"}, kinds
            error = replies[-1].error
            assert pb.ErrorCode.Name(error.code) == fuzz_case.code, (
                f"{fuzz_case.kind}: {pb.ErrorCode.Name(error.code)} {error.message!r}"
            )
            assert error.message
            seen[fuzz_case.kind] += 1
            if sum(seen.values()) % STEP_EVERY == 0 and not good.finished:
                good.step(drafts_from(reference, len(good.tokens), good.round, gamma=1))

        fuzz()
        assert 0 < good.round and not good.finished, (
            "the well-formed session should still be running when the fuzz ends"
        )
        assert set(served.service.sessions) == {good.session_id}, "an errored stream left its session behind"
        while not good.finished:
            good.step(drafts_from(reference, len(good.tokens), good.round, gamma=1))
        assert good.close() == []
    assert good.tokens == reference
    assert sum(seen.values()) >= 1000, seen
    assert len(seen) >= 30, f"fault kinds not all reached: {sorted(seen)}"
    # Still serving, and still right.
    fresh = EdgeClient(f"127.0.0.1:{served.port}").generate(
        GOOD_PROMPT, Mode.CLOUD_AR, GenerationConfig(max_new_tokens=GOOD_TOKENS)
    )
    assert fresh.tokens == reference
