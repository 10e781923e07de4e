"""Provisional tokens in a generation's state, as a specification: final verdicts confirm them up
to the first disagreement, where the target's token replaces the draft's and the rest are
retracted; a server that never returns leaves them as output, flagged; the events replay to the
text; re-verification hands the draft's own tokens (and distributions) back as blocks."""

from __future__ import annotations

import io

import torch

from edgespec.cli import build_parser
from edgespec.cli.options import recovery_policy
from edgespec.cli.printers import ProvisionalPrinter
from edgespec.core.config import GenerationConfig, SamplingParams
from edgespec.core.generation import Generation, TextEvent, apply_events
from edgespec.core.modes import Mode

PROMPT = [1, 2, 3]


def generation(sampled: bool = False) -> tuple[Generation, list[TextEvent]]:
    config = GenerationConfig(
        max_new_tokens=20, gamma=3, sampling=SamplingParams(temperature=1.0) if sampled else SamplingParams()
    )
    gen = Generation(PROMPT, Mode.SD, config)
    events: list[TextEvent] = []
    gen.listener = events.append
    return gen, events


def test_verdicts_confirm_provisional_tokens_then_replace_the_first_disagreement_and_retract_the_rest() -> None:
    gen, events = generation()
    gen.commit([10, 11], 0.0)
    gen.add_provisional([12, 13, 14, 15, 16], None)
    gen.commit([12, 13], 0.1)  # the target agrees with two of them
    assert gen.provisional == [14, 15, 16]
    gen.commit([14, 99, 7], 0.2)  # agrees with 14, then says 99 where the draft said 15
    assert gen.provisional == [] and gen.new_tokens == [10, 11, 12, 13, 14, 99, 7]
    assert events == [
        TextEvent("final", 0, (10, 11)),
        TextEvent("provisional", 2, (12, 13, 14, 15, 16)),
        TextEvent("final", 2, (12, 13)),
        TextEvent("final", 4, (14,)),
        TextEvent("retract", 5, (99,)),
        TextEvent("final", 5, (99, 7)),
    ]
    assert events[4].replaced_by == 99
    assert apply_events(events) == gen.new_tokens
    stats = gen.stats
    assert (stats.provisional_tokens, stats.reverified, stats.retractions, stats.retracted_tokens) == (5, 3, 1, 2)
    assert stats.lossless and stats.new_tokens == 7


def test_a_text_that_ends_before_the_provisional_tokens_retracts_what_is_left() -> None:
    gen, events = generation()
    gen.add_provisional([5, 6, 7], None)
    gen.commit([5], 0.0)
    gen.finish("eos")
    assert events[-1] == TextEvent("retract", 1) and events[-1].replaced_by is None
    assert apply_events(events) == gen.new_tokens == [5]


def test_a_server_that_never_returns_leaves_the_provisional_tokens_flagged() -> None:
    gen, events = generation()
    gen.commit([10], 0.0)
    gen.add_provisional([12, 13], None)
    gen.settle_provisional(1.0)
    assert gen.new_tokens == [10, 12, 13] and events[-1] == TextEvent("final", 1, (12, 13), verified=False)
    assert gen.stats.fallback_tokens == 2 and gen.stats.fallback_spans == [(1, 3)] and not gen.stats.lossless


def test_re_verification_hands_back_the_drafts_own_tokens_and_distributions() -> None:
    gen, _ = generation(sampled=True)
    gen.commit([10], 0.0)
    rows = torch.softmax(torch.randn(4, 8), dim=-1)
    gen.add_provisional([4, 5, 6, 7], rows)
    block = gen.provisional_block(PROMPT + [10], 3)
    assert block is not None and block.tokens == [4, 5, 6]
    assert block.probs is not None and torch.equal(block.probs, rows[:3])
    # A branch assuming the draft's first two tokens continues from the third.
    later = gen.provisional_block(PROMPT + [10, 4, 5], 3)
    assert later is not None and later.tokens == [6, 7] and torch.equal(later.probs, rows[2:])
    # A sequence that left the provisional text (an exit's verdict said otherwise) is drafted afresh.
    assert gen.provisional_block(PROMPT + [10, 9], 3) is None
    assert gen.provisional_block(PROMPT + [10, 4, 5, 6, 7], 3) is None


def test_no_provisional_is_the_fallback_switch_and_the_printer_marks_and_retracts() -> None:
    parse = lambda *extra: build_parser().parse_args(["generate", "--server", "127.0.0.1:1", "hi", *extra])  # noqa: E731
    assert recovery_policy(parse("--no-provisional")).fallback is False
    assert recovery_policy(parse()).fallback is True and recovery_policy(parse()).outage_budget_s >= 100

    class Decoder:
        def decode(self, ids: list[int], **kwargs: object) -> str:
            return "".join(chr(ord("a") + i) for i in ids)

    out = io.StringIO()
    printer = ProvisionalPrinter(Decoder(), out)
    for event in [TextEvent("provisional", 0, (0, 1)), TextEvent("retract", 1, (3,)), TextEvent("final", 0, (0, 3))]:
        printer(event)
    text = out.getvalue()
    assert (
        "provisional" in text
        and "ab" in text
        and "retracted the provisional tokens from position 1" in text
        and "'d'" in text
    )


def test_an_outage_resumed_after_a_probe_keeps_its_budget_and_without_provisional_text_keeps_trying() -> None:
    import random

    from edgespec.client.recovery import Outage, RecoveryPolicy

    patient = RecoveryPolicy(
        retries=1,
        backoff_initial_s=0.0,
        backoff_max_s=0.0,
        jitter=0.0,
        fallback=False,
        outage_budget_s=10.0,
        probe_interval_s=2.0,
    )
    outage = Outage(patient, random.Random(0))
    assert [outage.next_delay() for _ in range(3)] == [0.0, 2.0, 2.0]  # quick retries, then probing pace
    outage.started -= 9.0
    assert outage.next_delay() is None  # the budget, not the retries, ends it
    again = outage.again()
    assert again.attempts == 0 and again.started == outage.started and again.next_delay() == 0.0
    assert Outage(RecoveryPolicy(retries=0, fallback=True)).next_delay() is None  # straight to provisional text
