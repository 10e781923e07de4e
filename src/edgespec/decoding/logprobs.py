"""The target's log-probabilities of the tokens a round emits, from the logits the verifier
already holds for the round (no extra forward)."""

from __future__ import annotations

from typing import Sequence

import torch

from edgespec.core.logprobs import TokenLogprob


def token_logprobs(logits: torch.Tensor, tokens: Sequence[int], top: int) -> list[TokenLogprob]:
    """``logits``: [n, vocab], row i the target's scores for the position of ``tokens[i]``
    (n >= len(tokens)); each token's log-softmax and the ``top`` likeliest alternatives."""
    if logits.dim() != 2 or logits.shape[0] < len(tokens):
        raise ValueError(f"need a logits row per token ({len(tokens)}), got shape {tuple(logits.shape)}")
    rows = torch.log_softmax(logits[: len(tokens)].float(), dim=-1)  # [n, vocab]
    chosen = rows[torch.arange(len(tokens)), torch.tensor(list(tokens), dtype=torch.long)].tolist()
    if top > 0:
        values, ids = torch.topk(rows, min(top, rows.shape[-1]), dim=-1)  # [n, top]
        alternatives = [tuple(zip(row_ids, row_values)) for row_ids, row_values in zip(ids.tolist(), values.tolist())]
    else:
        alternatives = [()] * len(tokens)
    return [TokenLogprob(int(token), float(lp), alts) for token, lp, alts in zip(tokens, chosen, alternatives)]
