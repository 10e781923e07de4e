"""One forward pass over several sessions' KV caches at once (ragged lengths).

Each session keeps its own `TrackedCache`. For a batched pass the caches are copied into one
padded cache, the new tokens are left-padded so every row's real tokens end at the last column,
and an attention mask hides both kinds of padding:

    row i: [ cache_i (L_i) | pad (Lmax - L_i) | pad (Pmax - P_i) | pending_i (P_i) ]

Position ids are given explicitly (L_i + j for the j-th pending token), so rotary embeddings see
each session's true positions. Afterwards each session's cache gets exactly its own P_i new
entries. Between passes a session's entries stay in their stacked form (every layer in one
tensor, `TrackedCache.stacked`), so building the padded cache takes a few copies for the whole
batch and writing back one copy per session for the keys and one for the values, not one per
layer and session. Copying the caches costs memory traffic proportional to the batch's total
context; for the short verify blocks of speculative decoding that is small beside the weights'
traffic it saves (one pass over the weights for the whole batch instead of one per session).
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from transformers import DynamicCache

from edgespec.models.kv import TrackedCache, cache_argument_name, hold

logger = logging.getLogger(__name__)

# Any id in the vocabulary will do: padded positions are masked out of every attention.
_PAD_ID = 0


def forward_batch(
    model: torch.nn.Module,
    caches: Sequence[TrackedCache],
    pendings: Sequence[Sequence[int]],
    tails: Sequence[int],
    argmax_only: Sequence[bool] | None = None,
) -> list[torch.Tensor]:
    """Feed each ``pendings[i]`` on top of ``caches[i]`` in one pass; logits [tails[i], vocab]
    (float32, on the host) per session, or with ``argmax_only[i]`` their argmax ids [tails[i]]
    (see ``ScoreRequest``). The caches are only changed once the pass has succeeded."""
    if len({id(c) for c in caches}) != len(caches):
        raise ValueError("a cache appears twice in one batch: each session's rows need a cache of their own")
    if any(not p for p in pendings):
        raise ValueError("nothing to feed for a session: its sequence is already fully cached")
    batch = len(caches)
    cached = [len(c) for c in caches]
    fed = [len(p) for p in pendings]
    longest_cache, longest_feed = max(cached), max(fed)

    # The rows' inputs in a few whole-batch operations (not several per row).
    input_ids = torch.tensor(
        [[_PAD_ID] * (longest_feed - len(p)) + [int(t) for t in p] for p in pendings], dtype=torch.long
    )
    held_column = torch.tensor(cached, dtype=torch.long)[:, None]
    pad_column = torch.tensor([longest_feed - f for f in fed], dtype=torch.long)[:, None]
    columns = torch.arange(longest_feed)[None, :]
    fed_columns = columns >= pad_column
    position_ids = torch.where(fed_columns, held_column + columns - pad_column, 0)  # padding: position 0, masked
    attention_mask = torch.cat([torch.arange(longest_cache)[None, :] < held_column, fed_columns], dim=1).long()

    # Every session holding entries in its stacked form, with room for what this pass feeds it.
    stores = [kv.stacked(len(pending)) if held else None for kv, pending, held in zip(caches, pendings, cached)]
    padded = _padded_cache(model, stores, cached, longest_cache)
    device = model.device
    output = model(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
        use_cache=True,
        logits_to_keep=max(tails),
        **{cache_argument_name(model): padded},
    )
    # Each session's new entries, every layer at once: one copy per session for the keys and one
    # for the values, into its stacked storage (rows' real tokens end at the last column).
    new_keys = torch.stack([layer.keys[:, :, longest_cache:] for layer in padded.layers], dim=2).permute(0, 3, 2, 1, 4)
    new_values = torch.stack([layer.values[:, :, longest_cache:] for layer in padded.layers], dim=2).permute(
        0, 3, 2, 1, 4
    )
    # [batch, fed, layers, heads, dim], views
    for row, (kv, pending, held) in enumerate(zip(caches, pendings, cached)):
        keys, values = stores[row] or kv.stacked(
            len(pending), like=new_keys
        )  # a session that held nothing gets its storage now
        keys[held : held + len(pending)] = new_keys[row, longest_feed - len(pending) :]
        values[held : held + len(pending)] = new_values[row, longest_feed - len(pending) :]
        kv.appended(pending)
    greedy = argmax_only if argmax_only is not None else [False] * batch
    # Every greedy row's ids in one argmax and one copy to the host for the whole pass (one
    # synchronisation, not one per session); rows' real positions end at the last column.
    choices = output.logits.argmax(dim=-1).cpu() if any(greedy) else None
    return [
        choices[row, -tail:] if wants_ids and choices is not None else output.logits[row, -tail:, :].float().cpu()
        for row, (tail, wants_ids) in enumerate(zip(tails, greedy))
    ]


def _padded_cache(
    model: torch.nn.Module, stores: Sequence[tuple[torch.Tensor, torch.Tensor] | None], cached: list[int], longest: int
) -> DynamicCache:
    """The sessions' stacked entries in one [batch, heads, longest, dim] cache per layer, zeros
    where a session holds less: for all layers at once, one concatenation and one indexed copy
    for the keys and the same for the values, whatever the batch (on an accelerator a batched
    pass is otherwise launch-bound on small per-session copies)."""
    padded = DynamicCache(config=model.config)
    if longest == 0:
        return padded
    holding = [(row, held) for row, held in enumerate(cached) if held]
    template = stores[holding[0][0]][0]  # type: ignore[index]
    layers, heads, dim = template.shape[1], template.shape[2], template.shape[3]
    device = template.device
    helds = torch.tensor([held for _, held in holding])
    starts = torch.repeat_interleave(torch.tensor([row * longest for row, _ in holding]), helds)
    offsets = torch.arange(int(helds.sum())) - torch.repeat_interleave(torch.cumsum(helds, 0) - helds, helds)
    slots = (starts + offsets).to(device)  # each held entry's place in the [batch x longest] grid
    batch = len(cached)
    # Each session's held entries are one contiguous block of its storage: one concatenation of
    # them all (one kernel on an accelerator), placed by one indexed copy.
    keys = template.new_zeros((batch * longest, layers, heads, dim))
    values = template.new_zeros((batch * longest, layers, heads, dim))
    keys.index_copy_(0, slots, torch.cat([stores[row][0][:held] for row, held in holding]))  # type: ignore[index]
    values.index_copy_(0, slots, torch.cat([stores[row][1][:held] for row, held in holding]))  # type: ignore[index]
    for index, layer in enumerate(padded.layers):
        # [batch x longest, heads, dim] of this layer -> [batch, heads, longest, dim], a view.
        hold(
            layer,
            keys[:, index].view(batch, longest, heads, dim).transpose(1, 2),
            values[:, index].view(batch, longest, heads, dim).transpose(1, 2),
        )
    return padded
