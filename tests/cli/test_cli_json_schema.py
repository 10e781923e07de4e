"""`edgespec generate --json-schema FILE`: the output follows the schema and equals masked
`generate` (in process against a tiny verifier that shares the edge's tokenizer); a schema that
does not compile fails before any session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgespec.cli import main
from edgespec.core.grammar import Grammar
from edgespec.decoding.grammar import tokenizer_fingerprint
from edgespec.models.loading import load_tokenizer
from edgespec.models.target import TargetRuntime
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.servicer import VerifierService
from tests.support.grammar_oracle import masked_generate
from tests.support.json_tokenizer import json_tokenizer
from tests.support.tiny_models import layer_skip_copy, tiny_model

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def draft_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("draft")
    layer_skip_copy(tiny_model("qwen2", seed=0), keep=3).save_pretrained(directory)
    json_tokenizer().save_pretrained(directory)
    return directory


def test_generate_follows_the_schema(draft_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tokenizer = load_tokenizer(str(draft_dir))  # as the CLI loads it: the verifier shares the edge's tokenizer
    eos = tokenizer.eos_token_id
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(SCHEMA))
    service = VerifierService(TargetRuntime(tiny_model("qwen2", seed=0)), tokenizer=tokenizer, eos_ids=frozenset({eos}))
    server = RunningServer(service, ServerConfig(port=0))
    try:
        code = main([
            "generate", "--server", f"127.0.0.1:{server.port}", "--draft", str(draft_dir), "--dtype", "float32",
            "--mode", "sd", "--max-new-tokens", "80", "--raw", "--json", "--json-schema", str(schema_file), "go",
        ])  # fmt: skip
    finally:
        server.stop()
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    grammar = Grammar("json_schema", json.dumps(SCHEMA), tokenizer_fingerprint(tokenizer))
    expected = masked_generate(tiny_model("qwen2", seed=0), tokenizer, grammar, tokenizer.encode("go"), 80, eos)
    assert printed["tokens"] == expected
    assert isinstance(json.loads(printed["text"])["ok"], bool)


def test_a_schema_that_does_not_compile_fails_first(
    draft_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schema_file = tmp_path / "bad.json"
    schema_file.write_text(json.dumps({"type": "bogus"}))
    command = ["generate", "--server", "127.0.0.1:1", "--draft", str(draft_dir), "--json-schema", str(schema_file), "x"]
    code = main(command)
    assert code == 2 and "bogus" in capsys.readouterr().err
