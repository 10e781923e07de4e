"""Token ids to text for the OpenAI API: stop strings cut exactly whatever the chunking, and the
incremental decode equals a one-shot decode (incomplete UTF-8 characters held back)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from edgespec.openai_api.detokenizer import IncrementalDetokenizer
from edgespec.openai_api.stops import StopScanner

ALPHABET = "ab c"


def first_stop_cut(text: str, stops: list[str]) -> str:
    """The oracle: the finished text, cut before the earliest occurrence of any stop."""
    starts = [text.find(stop) for stop in stops if stop in text]
    return text[: min(starts)] if starts else text


def scan_in_chunks(chunks: list[str], stops: list[str]) -> tuple[str, bool, list[str]]:
    scanner = StopScanner(stops)
    emitted: list[str] = []
    for chunk in chunks:
        result = scanner.push(chunk)
        emitted.append(result.text)
        if result.stopped:
            return "".join(emitted), True, emitted
    end = scanner.finish()
    emitted.append(end.text)
    return "".join(emitted), end.stopped, emitted


@settings(max_examples=400, deadline=None)
@given(
    text=st.text(alphabet=ALPHABET, max_size=30),
    stops=st.lists(st.text(alphabet=ALPHABET, min_size=1, max_size=4), max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=30), max_size=8),
)
def test_any_chunking_cuts_where_the_finished_text_would(text: str, stops: list[str], cuts: list[int]) -> None:
    bounds = sorted({0, len(text), *(min(c, len(text)) for c in cuts)})
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    emitted, stopped, _ = scan_in_chunks(chunks, stops)
    assert emitted == first_stop_cut(text, stops)
    assert stopped == any(stop in text for stop in stops)


def test_text_that_may_begin_a_stop_is_held_back_until_it_cannot() -> None:
    scanner = StopScanner(["</s>"])
    assert scanner.push("answer: 42<").text == "answer: 42"
    assert scanner.push("/").text == ""
    result = scanner.push("s> more")
    assert result.text == "" and result.stopped
    scanner = StopScanner(["</s>"])
    scanner.push("x </")
    assert scanner.push("b>").text == "</b>"  # not a stop after all: released


def test_an_earlier_starting_stop_wins_over_one_completed_first() -> None:
    # "b" is complete after "ab", but "abc" (which starts earlier) may still complete.
    scanner = StopScanner(["abc", "b"])
    assert scanner.push("xab").text == "x"
    result = scanner.push("c")
    assert result.stopped and result.text == ""
    scanner = StopScanner(["abc", "b"])
    scanner.push("xab")
    result = scanner.push("d")
    assert result.stopped and result.text == "a"


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """Every byte a token, GPT-2 style: a multi-byte character spans several tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={symbol: index for index, symbol in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def test_incremental_decode_equals_one_shot_and_never_emits_half_a_character() -> None:
    tokenizer = byte_level_tokenizer()
    text = "héllo wörld ✓ 日本 🙂!"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) > len(text)  # multi-byte characters really span tokens
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = [detokenizer.push(token) for token in ids] + [detokenizer.flush()]
    assert "".join(deltas) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in delta for delta in deltas)


def test_a_sequence_ending_inside_a_character_flushes_as_a_one_shot_decode_would() -> None:
    tokenizer = byte_level_tokenizer()
    ids = tokenizer("ok 🙂")["input_ids"][:-2]  # cut inside the emoji's four bytes
    detokenizer = IncrementalDetokenizer(tokenizer)
    streamed = "".join(detokenizer.push(token) for token in ids)
    assert streamed == "ok "
    assert streamed + detokenizer.flush() == tokenizer.decode(ids)
