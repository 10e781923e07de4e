"""Recording greedy traces (the data itself: ``drivers/trace.py``): per prompt, the target's
greedy continuation and, teacher-forced along it, the draft's argmax (with its top-k
probabilities) and each exit's argmax and confidence.

For greedy decoding this fixes every verdict: a block's accepted count is the length of its
prefix that matches the continuation, and the next token is the continuation's. It fixes every
early verdict that is right (an exit's argmax along the continuation); an early verdict that runs
past the first draft/target disagreement is wrong whatever it says, and is replayed as a miss.
"""

from __future__ import annotations

import logging
from typing import Iterable, Sequence

import torch

from edgespec.drivers.trace import TOPK, ExitTrace, Trace
from edgespec.models.draft import top_candidates
from edgespec.models.exit_heads import ExitReading
from edgespec.models.target import TargetRuntime

logger = logging.getLogger(__name__)


@torch.inference_mode()
def record_trace(
    target: TargetRuntime,
    draft_model: torch.nn.Module,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    eos_ids: Iterable[int],
    prompt_id: str = "",
    prompt_set: str = "",
) -> Trace:
    eos = set(eos_ids)
    model = target.model
    output = model.generate(
        torch.tensor([list(prompt_ids)]),
        attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=sorted(eos) or None,
        pad_token_id=0,
    )
    continuation = output[0, len(prompt_ids) :].tolist()
    ended = bool(continuation) and continuation[-1] in eos
    sequence = list(prompt_ids) + continuation
    tail = len(continuation) + 1
    readings: dict[int, ExitReading] = {}
    target.reset()
    target.score_tail(sequence, tail, on_exit=lambda reading: readings.__setitem__(reading.layer, reading))
    target.reset()
    draft_logits = draft_model(torch.tensor([sequence])).logits[0, -tail:].float()
    draft_argmax = draft_logits.argmax(dim=-1)
    # What a greedy client would send at each position along the continuation: its top-8 ids.
    candidates = torch.stack([top_candidates(row, int(token)) for row, token in zip(draft_logits, draft_argmax)])
    exits: dict[str, ExitTrace] = {}
    if target.exits is not None:
        for layer, reading in sorted(readings.items()):
            logits = reading.logits.float()
            top = logits.softmax(dim=-1).max(dim=-1)
            restricted = logits.gather(1, candidates).softmax(dim=-1).max(dim=-1)
            exits[str(layer)] = ExitTrace(
                top.indices.tolist(),
                [round(float(p), 5) for p in top.values],
                target.exits.spec(layer).threshold,
                candidates.gather(1, restricted.indices[:, None]).squeeze(1).tolist(),
                [round(float(p), 5) for p in restricted.values],
            )
    draft_probs = draft_logits.softmax(dim=-1)
    topk = draft_probs.topk(TOPK, dim=-1)
    return Trace(
        id=prompt_id,
        prompt_set=prompt_set,
        prompt_ids=list(prompt_ids),
        continuation=continuation,
        ended_in_eos=ended,
        draft_argmax=draft_argmax.tolist(),
        draft_topk_ids=topk.indices.tolist(),
        draft_topk_probs=[[round(float(p), 5) for p in row] for row in topk.values],
        exits=exits,
        num_layers=target.num_layers,
    )
