"""Real rounds without real weights: a random-weight target made to repeat the last prompt token,
and a draft that replays a recorded trace onto it, so a capacity run on an accelerator accepts,
commits and costs what the real pair's rounds did.

For the scripted draft to know the target's token, the random target's attention and MLP output
projections are scaled by ``OUTPUT_SCALE``: each position's hidden state stays near its own
embedding, and an LM head equal to the embedding then ranks that token first by a margin of ~25
logits, so bf16 rounding cannot flip it. The projections still run at full cost."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from edgespec.core.block import DraftBlock
from edgespec.drivers.trace import Trace
from edgespec.drivers.trace_backends import TraceEdge

OUTPUT_SCALE = 1e-3


def scripted_trace(trace: Trace, vocab: int) -> Trace:
    """``trace`` mapped onto the repeating target: same prompt, the target writes the last prompt
    token over and over, the draft agrees exactly where the real draft agreed. Prompt ids beyond a
    small test model's vocabulary are folded into it (their values do not change the time)."""
    trace = Trace(**{**trace.__dict__, "prompt_ids": [token % vocab for token in trace.prompt_ids]})
    repeated = trace.prompt_ids[-1]
    wrong = (repeated + 1) % vocab
    agreed = [d == c for d, c in zip(trace.draft_argmax, trace.continuation)] + [True]
    draft = [repeated if ok else wrong for ok in agreed[: len(trace.draft_argmax)]]
    return Trace(
        id=trace.id,
        prompt_set=trace.prompt_set,
        prompt_ids=list(trace.prompt_ids),
        continuation=[repeated] * len(trace.continuation),
        ended_in_eos=False,
        draft_argmax=draft,
        draft_topk_ids=[[d, wrong if d == repeated else repeated] for d in draft],
        draft_topk_probs=trace.draft_topk_probs,
        num_layers=trace.num_layers,
    )


class ScriptedDraft:
    """`DraftRuntime`'s interface over a trace (the simulator's `TraceEdge`): the blocks the real
    draft drafted, after the edge's drafting time (it sleeps: the edge is another device)."""

    def __init__(self, trace: Trace, edge_profile: Any, vocab: int) -> None:
        self.edge = TraceEdge(trace, edge_profile)  # the client passes its draft stop with every block
        self.vocab_size = vocab
        # The id `scripted_trace` drafts where the real draft disagreed.
        self.wrong = (trace.continuation[0] + 1) % vocab
        self.seconds = 0.0

    def reset(self) -> None:
        self.edge._cached = []

    def rollback(self, sequence: Sequence[int]) -> None:
        pass

    def draft(
        self,
        sequence: Sequence[int],
        gamma: int,
        params: Any,
        seed: int = 0,
        should_stop: Callable[[], bool] | None = None,
        candidates: bool = False,
        alternatives: bool = False,
        stop_below: float = 0.0,
        min_tokens: int = 1,
    ) -> DraftBlock:
        block, seconds = self.edge.draft(sequence, gamma, min_tokens, stop_below)
        per_token = seconds / len(block.tokens)
        tokens: list[int] = []
        for index, token in enumerate(block.tokens):
            if index > 0 and should_stop is not None and should_stop():
                break
            time.sleep(per_token)
            self.seconds += per_token
            tokens.append(token if token >= 0 else self.wrong)  # past a disagreement: any wrong id
        kept = len(tokens)
        return DraftBlock(tokens, confidence=block.confidence[:kept], runner_up=[self.wrong] * kept)


def repeating_target(config_dir: str, dtype: str, device: str) -> Any:
    """A random-weight target in the shapes of ``config_dir`` that repeats the last prompt token
    (see the module's docstring)."""
    import torch

    from edgespec.sim.profiling import random_weight_target

    model = random_weight_target(config_dir, dtype, device).requires_grad_(False)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(OUTPUT_SCALE)
            layer.mlp.down_proj.weight.mul_(OUTPUT_SCALE)
        # The real checkpoint's head is untied: give it the embedding's values (same cost).
        model.get_output_embeddings().weight.copy_(model.get_input_embeddings().weight)
    return model
