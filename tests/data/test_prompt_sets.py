"""The packaged prompt sets: evaluation (MT-bench, HumanEval) and tuning (ShareGPT) never overlap."""

from __future__ import annotations

import json

import pytest

from edgespec.data.prompt_sets import SHAREGPT_PROMPT_CHARS, load_prompts
from edgespec.data.sharegpt import split_of


def test_sharegpt_tuning_prompts_are_held_out_first_turns() -> None:
    records = load_prompts("sharegpt", limit=5)
    assert len(records) == 5
    shortest, longest = SHAREGPT_PROMPT_CHARS
    for record in records:
        assert record.id.startswith("sharegpt/")
        # The calibration split: never seen by exit training.
        assert split_of(record.id.removeprefix("sharegpt/")) == "calibration"
        assert [m["role"] for m in record.messages] == ["user"]
        assert shortest <= len(record.messages[0]["content"]) <= longest


def test_tuning_and_evaluation_sets_do_not_share_a_prompt() -> None:
    tuning = {r.messages[0]["content"] for r in load_prompts("sharegpt", limit=20)}
    evaluation = {r.messages[0]["content"] for name in ("mtbench", "humaneval") for r in load_prompts(name)}
    assert tuning and evaluation and not tuning & evaluation


def test_jsonl_prompts_and_bad_lines(tmp_path) -> None:
    good = tmp_path / "p.jsonl"
    good.write_text(
        json.dumps({"id": "a", "prompt": "def f():"})
        + "\n\n"
        + json.dumps({"messages": [{"role": "user", "content": "hi"}]})
        + "\n"
    )
    records = load_prompts(str(good))
    assert [r.id for r in records] == ["a", "p/3"] and records[0].text == "def f():" and records[1].is_chat
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n')
    with pytest.raises(ValueError, match="needs 'prompt'"):
        load_prompts(str(bad))
    with pytest.raises(ValueError, match="unknown prompt set"):
        load_prompts("nonsense")
