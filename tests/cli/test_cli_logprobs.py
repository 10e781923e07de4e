"""`edgespec generate --logprobs N` prints the target's log-probabilities (here as --json), in
process against a tiny verifier with a tiny draft saved as a model directory; --local refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgespec.cli import main
from tests.client.test_recovery import draft_model, serve
from tests.support.chat_tokenizer import chat_tokenizer
from tests.support.logprob_oracle import generate_with_logprobs
from tests.support.tiny_models import tiny_model


@pytest.fixture(scope="module")
def draft_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("draft")
    draft_model().save_pretrained(directory)
    chat_tokenizer().save_pretrained(directory)
    return directory


def test_generate_with_logprobs_prints_the_targets(draft_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve()
    try:
        code = main([
            "generate", "--server", f"127.0.0.1:{server.port}", "--draft", str(draft_dir), "--dtype", "float32",
            "--mode", "sd", "--max-new-tokens", "12", "--raw", "--json", "--logprobs", "2", "hello",
        ])  # fmt: skip
    finally:
        server.stop()
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tokens, scores = generate_with_logprobs(tiny_model("qwen2", seed=0), chat_tokenizer().encode("hello"), 12)
    assert printed["tokens"] == tokens
    assert [entry["token"] for entry in printed["logprobs"]] == tokens
    for entry, row in zip(printed["logprobs"], scores):
        assert entry["logprob"] == pytest.approx(float(row[entry["token"]]), abs=1e-4)
        assert len(entry["top"]) == 2


def test_local_generation_refuses_logprobs(draft_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["generate", "--local", "--target", str(draft_dir), "--draft", str(draft_dir), "--logprobs", "1", "hi"])
    assert code == 2 and "--server" in capsys.readouterr().err
