"""Where decisions come from: the target model through edgespec, in any mode, in process
(``LocalEngine``) or over gRPC (``EdgeClient``); both behind one ``generate`` callable."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from edgespec.decoding.config import GenerationConfig, GenerationResult
from edgespec.decoding.modes import Mode
from edgespec.prompting import render_prompt

logger = logging.getLogger(__name__)

Generate = Callable[[Sequence[int], Mode, GenerationConfig], GenerationResult]


@dataclass
class Decision:
    text: str
    tokens: list[int]
    prompt_tokens: int
    latency_s: float  # wall time from the request to the last token, as the robot waits for it
    ttft_s: float
    stats: dict[str, Any] = field(default_factory=dict)


class DecisionSource(Protocol):
    def decide(self, messages: list[dict[str, Any]]) -> Decision: ...


class ModelDecider:
    """The chat messages rendered with the model's template, generated in ``mode``, decoded."""

    def __init__(self, generate: Generate, tokenizer: Any, mode: Mode, config: GenerationConfig) -> None:
        self.generate = generate
        self.tokenizer = tokenizer
        self.mode = mode
        self.config = config

    def decide(self, messages: list[dict[str, Any]]) -> Decision:
        prompt_ids = render_prompt(self.tokenizer, messages)
        start = time.perf_counter()
        result = self.generate(prompt_ids, self.mode, self.config)
        latency = time.perf_counter() - start
        text = self.tokenizer.decode(result.tokens, skip_special_tokens=True)
        stats = result.stats.as_dict()
        return Decision(text, list(result.tokens), len(prompt_ids), latency, float(result.stats.ttft_s), stats)


def local_generate(target_model: Any, draft_runtime: Any, exits: Any = None) -> Generate:
    """Target and draft in this process (the reference engine)."""
    from edgespec.decoding.engine import LocalEngine
    from edgespec.models.target import TargetRuntime

    engine = LocalEngine(TargetRuntime(target_model, exits), draft_runtime)
    return engine.generate


def remote_generate(address: str, draft_runtime: Any, options: Any = None) -> Generate:
    """The edge client: the draft here, the target behind ``address`` (a server or a link)."""
    from edgespec.client.edge_client import EdgeClient

    client = EdgeClient(address, draft_runtime, options) if options is not None else EdgeClient(address, draft_runtime)
    return client.generate
