"""One EdgeClient, one generation after another (as the benchmark's edge worker and any app
use it): a pre-draft still running on the draft thread when a generation ends must not leak
into the next one."""

from __future__ import annotations

import threading
from typing import Sequence

import torch

from edgespec.client.edge_client import EdgeClient
from edgespec.core.block import DraftBlock
from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.exits.heads import ExitHeads, ExitSpec
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.servicer import VerifierService
from tests.support.tiny_models import greedy_reference, tiny_model

PROMPT = [3, 17, 42, 8, 9, 61]


class HeldPredraft(DraftRuntime):
    """The target itself as draft (every block accepted). Its first pre-draft is parked inside
    its forward pass, mid-way through the cache update, until ``release``; ``reset_called`` is
    set when the client resets the draft for a new generation."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        self.in_predraft = False
        self.predrafted_after: list[int] = []  # the held pre-draft's sequence
        self.held = threading.Event()
        self.release = threading.Event()
        self.reset_called = threading.Event()
        model.model.layers[0].register_forward_hook(self._hook)

    def draft(
        self, sequence: Sequence[int], gamma: int, *args: object, should_stop: object = None, **kwargs: object
    ) -> DraftBlock:  # type: ignore[override]
        self.in_predraft = should_stop is not None
        if self.in_predraft and not self.held.is_set():
            self.predrafted_after = list(sequence)
        return super().draft(sequence, gamma, *args, should_stop=should_stop, **kwargs)  # type: ignore[arg-type]

    def _hook(self, *_args: object) -> None:
        if self.in_predraft and not self.held.is_set():
            self.held.set()
            self.release.wait(10)

    def reset(self) -> None:
        super().reset()
        self.reset_called.set()


def test_a_predraft_still_running_when_a_generation_ends_does_not_break_the_next() -> None:
    """Round 0 drafts the target's own first token; the exit after layer 1 disagrees with it,
    so the early verdict assumes a rejection and a pre-draft starts, while the final verdict
    accepts and, with 2 new tokens, ends the generation with that pre-draft still in flight. The
    next generation's prompt begins with the token that pre-draft feeds (its assumed token):
    what a stale token list must not be mistaken for."""
    target = tiny_model("qwen2", seed=0)
    exits = ExitHeads([ExitSpec(1)], target.config.hidden_size)
    server = RunningServer(
        VerifierService(TargetRuntime(target, exits), tokenizer=None, eos_ids=frozenset()), ServerConfig(port=0)
    )
    draft = HeldPredraft(tiny_model("qwen2", seed=0))
    client = EdgeClient(f"127.0.0.1:{server.port}", draft)
    config = GenerationConfig(early_verdicts=True, max_new_tokens=2, gamma=1)
    outcome: dict[str, object] = {}
    try:
        first = client.generate(PROMPT, Mode.SD_EE_PREDRAFT, config)
        assert first.tokens == greedy_reference(target, PROMPT, 2)
        assert draft.held.is_set() and first.stats.misses == 1, "the setting did not leave a pre-draft in flight"
        draft.reset_called.clear()

        assumed = draft.predrafted_after[len(PROMPT) :]
        next_prompt = assumed + PROMPT

        def second() -> None:
            try:
                outcome["tokens"] = client.generate(
                    next_prompt, Mode.SD, GenerationConfig(early_verdicts=True, max_new_tokens=8, gamma=3)
                ).tokens
            except Exception as error:  # noqa: BLE001 - reported by the assertion below
                outcome["error"] = error

        runner = threading.Thread(target=second, daemon=True)
        runner.start()
        assert draft.reset_called.wait(10)
        draft.release.set()  # the old pre-draft finishes its forward after the reset
        runner.join(20)
    finally:
        draft.release.set()
        server.stop()
    assert "error" not in outcome, f"the next generation failed: {outcome.get('error')!r}"
    assert outcome["tokens"] == greedy_reference(target, next_prompt, 8)
