"""A real tool call on the real pair: Qwen2.5-Coder-1.5B (fp32) verifying over gRPC, 0.5B drafting
under the tool grammar in `sd`, the prompt rendered by Qwen's own chat template with the tools.
The answer equals `transformers` `generate` on the target with the same grammar as a logits
processor (greedy, fp32), and its call's arguments are valid for the tool's schema. One call
per answer: allowed parallel calls, the target went on to a second call past the token budget."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Iterator

import pytest
from transformers import LogitsProcessorList

from edgespec.client.edge_client import ClientOptions, EdgeClient
from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.decoding.tool_call_parser import parse_tool_calls
from edgespec.decoding.tool_calls import ToolFunction, tool_grammar
from edgespec.models.draft import DraftRuntime
from edgespec.models.loading import LoadedModel, load_model
from edgespec.models.target import TargetRuntime
from edgespec.prompting import eos_token_ids, render_prompt
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.servicer import VerifierService
from tests.support.grammar_oracle import GrammarLogitsProcessor
from tests.support.tiny_models import greedy_generate

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("EDGESPEC_REAL_PAIR"), reason="needs the real model pair: set EDGESPEC_REAL_PAIR=1"
    ),
]

TARGET, DRAFT = "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"
NEW_TOKENS = 64
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "the city"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "description": "how many days ahead"},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "The weather forecast", "parameters": WEATHER_PARAMETERS},
    }
]
MESSAGES = [{"role": "user", "content": "What will the weather be in Paris over the next 3 days, in celsius?"}]


@pytest.fixture(scope="module")
def target() -> LoadedModel:
    return load_model(TARGET, "float32")


@pytest.fixture(scope="module")
def address(target: LoadedModel) -> Iterator[str]:
    eos = eos_token_ids(target.model, target.tokenizer)
    service = VerifierService(TargetRuntime(target.model), tokenizer=target.tokenizer, eos_ids=eos, target_name=TARGET)
    server = RunningServer(service, ServerConfig(port=0))
    yield f"127.0.0.1:{server.port}"
    server.stop()


@pytest.mark.parametrize("choice", ["required", "auto"])
def test_a_real_tool_call_under_sd_equals_masked_generate(target: LoadedModel, address: str, choice: str) -> None:
    tokenizer = target.tokenizer
    eos = sorted(eos_token_ids(target.model, tokenizer))
    functions = [ToolFunction("get_weather", WEATHER_PARAMETERS)]
    grammar = tool_grammar(tokenizer, functions, choice, parallel=False, eos_ids=eos)
    assert grammar is not None
    prompt = render_prompt(tokenizer, MESSAGES, tools=TOOLS)
    started = time.perf_counter()
    processor = GrammarLogitsProcessor(grammar, tokenizer, target.model.config.vocab_size, len(prompt), eos)
    out: Any = greedy_generate(target.model, prompt, NEW_TOKENS, eos, logits_processor=LogitsProcessorList([processor]))
    expected = out[0, len(prompt) :].tolist()
    oracle_s = time.perf_counter() - started
    draft = load_model(DRAFT, "float32")
    client = EdgeClient(address, DraftRuntime(draft.model), ClientOptions(connect_timeout_s=30.0), draft.tokenizer)
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=4, eos_ids=frozenset(eos), grammar=grammar)
    started = time.perf_counter()
    result = client.generate(prompt, Mode.SD, config)
    sd_s = time.perf_counter() - started
    print(f"{choice}: oracle {oracle_s:.1f} s, sd {sd_s:.1f} s, {len(result.tokens)} tokens, stats {result.stats}")
    assert result.tokens == expected
    parsed = parse_tool_calls(tokenizer.decode(result.tokens, skip_special_tokens=True))
    if choice == "required":
        assert [call.name for call in parsed.calls] == ["get_weather"] and result.tokens[-1] in eos
    for call in parsed.calls:
        arguments = json.loads(call.arguments)
        assert set(arguments) == {"city", "unit", "days"} and arguments["unit"] in ("celsius", "fahrenheit")
