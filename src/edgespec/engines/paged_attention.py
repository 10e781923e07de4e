"""The paged engine's attention: `transformers`' own SDPA paged path, plus a per-session layout for
passes where its block-diagonal mask would cost more than the model's other work.

`transformers`' SDPA paged path attends over one packed row with a [tokens, read rows] mask: every
query scores every session's keys and the mask throws all but its own away, so a pass over B
sessions costs B^2 attention work (a 64-session verify pass reads 64x the keys it needs). The
per-session layout gives each session a slot of ``width`` query positions and ``span`` read rows
(the pool's read indices laid out per slot, padded with the trash row), so the attention is one
batched SDPA over [sessions, heads, width, span]: linear in sessions. The same pool, the same
cache update, the same mask semantics; it is registered as an attention implementation of
`transformers` (``AttentionInterface``), and a pass without a layout falls back to the stock
SDPA function.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

ATTENTION_NAME = "edgespec_paged"


def paged_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,  # [1, heads, tokens, dim]
    key: torch.Tensor,  # [1, kv heads, read rows, dim]
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    slots = kwargs.get("session_slots")
    if not slots:  # a packed pass: transformers' own block-diagonal SDPA
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    heads, tokens, dim = query.shape[1:]
    width, span = tokens // slots, key.shape[2] // slots
    per_slot_query = query[0].view(heads, slots, width, dim).transpose(0, 1)  # [slots, heads, width, dim]
    per_slot_key = key[0].view(key.shape[1], slots, span, dim).transpose(0, 1)  # [slots, kv heads, span, dim]
    per_slot_value = value[0].view(value.shape[1], slots, span, dim).transpose(0, 1)
    output = torch.nn.functional.scaled_dot_product_attention(
        per_slot_query,
        per_slot_key,
        per_slot_value,
        attn_mask=attention_mask,  # [slots, 1, width, span]
        scale=scaling,
        enable_gqa=per_slot_query.shape[1] != per_slot_key.shape[1],
    )
    # [slots, heads, width, dim] -> [1, tokens, heads, dim], the layout attention functions return
    return output.transpose(1, 2).reshape(1, tokens, heads, dim), None


AttentionInterface.register(ATTENTION_NAME, paged_attention_forward)
