"""The oracle check of `edgespec bench --check-oracle` and the difference explainer of `make
demo`, on a tiny model: where two outputs part, the fp32 target's top two tokens and their
margin there (checked against the logits `generate` itself reports), and the bench report that
names each differing position next to its figure."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from edgespec.bench.oracle import (
    describe_difference,
    explain_difference,
    first_difference,
    oracle_generate,
    top2_margins,
)
from edgespec.bench.oracle_check import check_against_oracle
from edgespec.bench.report import render_markdown
from edgespec.bench.runner import BenchConfig
from edgespec.bench.summary import summarize_all
from tests.support.tiny_models import greedy_reference, tiny_model

PROMPT = [3, 17, 42, 8, 9, 61]
NEW_TOKENS = 16


@lru_cache(maxsize=None)
def model() -> torch.nn.Module:
    return tiny_model("qwen2", seed=0)


@lru_cache(maxsize=None)
def generate_logits() -> tuple[list[int], torch.Tensor]:
    """`generate`'s own tokens and per-step logits: an independent account of the margins."""
    out = model().generate(
        torch.tensor([PROMPT]),
        attention_mask=torch.ones(1, len(PROMPT), dtype=torch.long),
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=0,
    )
    return out.sequences[0, len(PROMPT) :].tolist(), torch.cat(out.logits).float()


def test_first_difference() -> None:
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2, 3], [1, 2]) == 2
    assert first_difference([], []) is None


def test_oracle_generate_is_greedy_generate_and_stops_after_eos() -> None:
    reference = greedy_reference(model(), PROMPT, NEW_TOKENS)
    assert oracle_generate(model(), PROMPT, NEW_TOKENS, ()) == reference
    eos = reference[5]
    assert eos not in reference[:5]
    assert oracle_generate(model(), PROMPT, NEW_TOKENS, {eos}) == reference[:6]


def test_margins_from_one_teacher_forced_forward_match_generates_logits() -> None:
    tokens, logits = generate_logits()
    for margin in top2_margins(model(), PROMPT, tokens, [0, 4, 15]):
        values, ids = torch.topk(logits[margin.position], 2)
        assert (margin.top1, margin.top2) == (int(ids[0]), int(ids[1]))
        assert margin.top1 == tokens[margin.position]
        assert abs(margin.margin - float(values[0] - values[1])) < 1e-3


def test_a_difference_is_named_with_its_position_both_choices_and_the_fp32_margin() -> None:
    tokens, logits = generate_logits()
    position = 7
    runner_up = int(torch.topk(logits[position], 2).indices[1])
    other = tokens[:position] + [runner_up] + [0] * (NEW_TOKENS - position - 1)  # parts at 7, then anything
    difference = explain_difference(model(), PROMPT, tokens, other)
    assert difference is not None
    assert (difference.position, difference.reference_token, difference.other_token) == (
        position,
        tokens[position],
        runner_up,
    )
    assert (difference.fp32_top1, difference.fp32_top2) == (tokens[position], runner_up)
    values = torch.topk(logits[position], 2).values
    assert abs(difference.fp32_margin - float(values[0] - values[1])) < 1e-3
    assert difference.fp32_agrees_with == "reference"
    assert "token 7" in describe_difference(
        difference
    ) and f"margin {difference.fp32_margin:.3f}" in describe_difference(difference)
    assert explain_difference(model(), PROMPT, tokens, tokens) is None


def test_bench_oracle_check_reports_each_mode_s_first_difference_and_caches_generate(tmp_path: Path) -> None:
    tokens, _ = generate_logits()
    jobs = [{"prompt_set": "t", "prompt_id": "t/0", "mode": mode, "prompt_ids": PROMPT} for mode in ("cloud-ar", "sd")]
    parted = tokens[:3] + [(tokens[3] + 1) % 96] + tokens[4:]
    records = [
        {"profile": "lan", "prompt_id": "t/0", "mode": "cloud-ar", "tokens": parted, "stats": {}},
        {"profile": "lan", "prompt_id": "t/0", "mode": "sd", "tokens": tokens, "stats": {}},
    ]
    cache = tmp_path / "oracle.jsonl"
    report = check_against_oracle("tiny", NEW_TOKENS, jobs, records, cache, model=model(), eos_ids=frozenset())
    assert [entry["position"] for entry in report[("lan", "cloud-ar")]] == [3] and report[("lan", "sd")] == []
    assert len(cache.read_text().splitlines()) == 1
    assert check_against_oracle("tiny", NEW_TOKENS, jobs, records, cache, model=model(), eos_ids=frozenset()) == report
    assert len(cache.read_text().splitlines()) == 1, "generate ran again for a cached prompt"

    config = BenchConfig(modes=("cloud-ar", "sd"), profiles=("lan",), dtype="bfloat16")
    summary = summarize_all(config, [], report)  # the timing columns need real runs; only correctness here
    text = render_markdown(summary, "edgespec bench --check-oracle")
    assert "oracle mismatches" in text and "bfloat16" in text and "self-consistency" in text
    assert "- cloud-ar differs from fp32 `generate`: t/0@3 (fp32 margin" in text


def test_the_demo_explanation_names_who_differs_where_and_what_fp32_generate_says() -> None:
    from edgespec.bench.oracle import explain_outputs

    tokens, logits = generate_logits()
    runner_up = int(torch.topk(logits[7], 2).indices[1])
    parted = tokens[:7] + [runner_up] + tokens[8:]
    outputs = {"cloud-ar": parted, "sd": tokens, "sd-ee": tokens, "edge-only": [1] * NEW_TOKENS}
    lines = explain_outputs(model(), PROMPT, outputs, oracle=tokens)
    margin = float(torch.topk(logits[7], 2).values.diff().abs())
    # cloud-ar chose the runner-up at 7: both speculative modes part from it there, and fp32
    # sides with them; edge-only is not explained (not lossless), but the oracle line names it.
    assert len(lines) == 3
    assert lines[0].startswith("sd: token 7: cloud-ar chose") and lines[0].endswith("fp32 picks sd's token")
    assert f"margin {margin:.3f}" in lines[0]
    assert lines[1].startswith("sd-ee: token 7")
    assert (
        lines[2] == "fp32 generate (the oracle) equals: sd, sd-ee; "
        "differs from: cloud-ar (from token 7), edge-only (from token 0)"
    )
    assert explain_outputs(model(), PROMPT, {"cloud-ar": tokens, "sd": tokens}) == []
