"""Where decisions come from: the target model through edgespec, in any mode, in process
(``LocalEngine``) or over gRPC (``EdgeClient``); both behind one ``generate`` callable."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Protocol, Sequence

from edgespec.core.config import GenerationConfig, GenerationResult
from edgespec.core.grammar import Grammar
from edgespec.core.modes import Mode
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
    def decide(self, messages: list[dict[str, Any]], schema: dict[str, Any] | None = None) -> Decision:
        """The reply to ``messages``; with ``schema``, a JSON value that follows it."""


class ModelDecider:
    """The chat messages rendered with the model's template, generated in ``mode``, decoded. A
    schema becomes the generation's grammar: the target's output is held to it (lossless: equal
    to the target's own decoding under the same mask), and the draft drafts under it."""

    def __init__(self, generate: Generate, tokenizer: Any, mode: Mode, config: GenerationConfig) -> None:
        self.generate = generate
        self.tokenizer = tokenizer
        self.mode = mode
        self.config = config

    def decide(self, messages: list[dict[str, Any]], schema: dict[str, Any] | None = None) -> Decision:
        prompt_ids = render_prompt(self.tokenizer, messages)
        config = self.config if schema is None else replace(self.config, grammar=self._grammar(schema))
        start = time.perf_counter()
        result = self.generate(prompt_ids, self.mode, config)
        latency = time.perf_counter() - start
        text = self.tokenizer.decode(result.tokens, skip_special_tokens=True)
        stats = result.stats.as_dict()
        reused = getattr(self.generate, "last_reused", None)
        if reused is not None:
            stats["reused_prompt_tokens"] = reused
        return Decision(text, list(result.tokens), len(prompt_ids), latency, float(result.stats.ttft_s), stats)

    def _grammar(self, schema: dict[str, Any]) -> Grammar:
        from edgespec.decoding.grammar import tokenizer_fingerprint

        return Grammar("json_schema", json.dumps(schema), tokenizer_fingerprint(self.tokenizer))


def local_generate(
    target_model: Any, draft_runtime: Any, exits: Any = None, reuse_context: bool = False, tokenizer: Any = None
) -> Generate:
    """Target and draft in this process (the reference engine). ``reuse_context``: both keep
    their KV caches across decisions and prefill only what is new (robot/reuse.py).
    ``tokenizer``: the models', needed to decide through a schema."""
    from edgespec.drivers.local_engine import LocalEngine
    from edgespec.models.target import TargetRuntime

    if not reuse_context:
        return LocalEngine(TargetRuntime(target_model, exits), draft_runtime, tokenizer=tokenizer).generate
    from edgespec.robot.reuse import PrefixKeepingTarget

    target = PrefixKeepingTarget(target_model, exits)
    return ReusingGenerate(LocalEngine(target, keep_draft_cache(draft_runtime), tokenizer=tokenizer).generate, target)


class ReusingGenerate:
    """``generate`` that also says how many prompt positions its prefill found cached."""

    def __init__(self, generate: Generate, target: Any) -> None:
        self._generate = generate
        self._target = target
        self.last_reused: int | None = None

    def __call__(self, prompt_ids: Sequence[int], mode: Mode, config: GenerationConfig) -> GenerationResult:
        result = self._generate(prompt_ids, mode, config)
        self.last_reused = int(self._target.last_reused)
        return result


def keep_draft_cache(draft_runtime: Any) -> Any:
    """The same draft, keeping its cache across generations (transformers backend; llama.cpp
    keeps and matches its own prefix already)."""
    from edgespec.models.draft import DraftRuntime
    from edgespec.robot.reuse import PrefixKeepingDraft

    if type(draft_runtime) is DraftRuntime:
        return PrefixKeepingDraft(draft_runtime.model)
    return draft_runtime


def remote_generate(
    address: str, draft_runtime: Any, options: Any = None, reuse_context: bool = False, tokenizer: Any = None
) -> Generate:
    """The edge client: the draft here, the target behind ``address`` (a server or a link).
    ``reuse_context`` keeps the draft's cache across decisions (``reuse_draft_cache``); the
    server keeps its side when it runs with ``--prefix-cache-tokens``. ``tokenizer``: the
    draft's, so it drafts under a schema's mask (without it only the server masks)."""
    from dataclasses import replace

    from edgespec.client.edge_client import ClientOptions, EdgeClient

    options = options if options is not None else ClientOptions()
    if reuse_context:
        options = replace(options, reuse_draft_cache=True)
    return EdgeClient(address, draft_runtime, options, tokenizer=tokenizer).generate
