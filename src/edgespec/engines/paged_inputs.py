"""One packed, variable-length pass over many sessions: the keyword arguments `transformers`' paged
attention path reads (the same names its continuous-batching ``ContinuousBatchingIOs`` builds), for
rows of any length, with logits kept where a verdict reads them.

Every session's new tokens sit side by side in one row of ``[1, tokens]``; each layer writes their
keys and values into the pool (``write_index``) and reads each session's whole history back
(``read_index``), and a block-diagonal causal mask keeps every token to its own session's past.
No session's cache is copied into a padded batch and written back.

Bucketed shapes (for captured graphs): the token count and the read count are rounded up to a few
sizes, the extra query rows write to the pool's trash rows and read its zeroed trash row, and the
mask hides them, so a padded pass computes exactly the unpadded one's values in its real rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from edgespec.engines.paged_pool import SessionPool

# Query tokens of a bucketed pass are rounded up to a power of two, at least this many.
SMALLEST_TOKEN_BUCKET = 8
# Read (key) rows are rounded up on a finer ladder: 2^n times 1, 1.25, 1.5 or 1.75, at least this.
SMALLEST_READ_BUCKET = 256


@dataclass(frozen=True)
class PassRow:
    """One session's share of a pass: ``new`` tokens fed after the ``past`` it holds; the logits
    of its last ``wanted`` tokens are read."""

    request_id: str
    past: int
    new: tuple[int, ...]
    wanted: int


@dataclass
class PackedPass:
    """A pass's inputs on the device, and where each row's wanted logits land in the output."""

    kwargs: dict[str, Any]
    query_tokens: int  # as fed, padding included
    read_tokens: int
    wanted_rows: list[range]  # per PassRow: its rows in the output logits
    padded: bool

    @property
    def shape_key(self) -> tuple[int, int]:
        return self.query_tokens, self.read_tokens


def token_bucket(count: int) -> int:
    return max(SMALLEST_TOKEN_BUCKET, 1 << (count - 1).bit_length())


def read_bucket(count: int) -> int:
    """The smallest 2^n x (1, 1.25, 1.5, 1.75) >= ``count``: at most 25 % padding of the attention reads."""
    size = SMALLEST_READ_BUCKET
    while size < count:
        size *= 2
    for quarter in (4, 5, 6, 7):
        candidate = size // 8 * quarter  # (size / 2) x (1, 1.25, 1.5, 1.75)
        if candidate >= count and candidate >= SMALLEST_READ_BUCKET:
            return candidate
    return size


def causal_block_mask(
    query_session: torch.Tensor,
    query_position: torch.Tensor,
    key_session: torch.Tensor,
    key_position: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The additive mask [1, 1, Q, K]: 0 where a query may see a key (same session, not later), the
    dtype's minimum elsewhere. The same mask as `transformers`' ``build_attention_mask`` builds, in a
    few whole-batch operations rather than two per session (launch-bound on an accelerator)."""
    visible = (query_session[:, None] == key_session[None, :]) & (key_position[None, :] <= query_position[:, None])
    mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    mask.masked_fill_(~visible, torch.finfo(dtype).min)
    return mask[None, None]


def pack(pool: SessionPool, rows: Sequence[PassRow], dtype: torch.dtype, bucketed: bool) -> PackedPass:
    """The inputs of one pass over ``rows`` (the sessions' blocks must already be allocated).

    Long because it fills the pass's parallel arrays (ids, positions, sessions, indices) in one
    walk over the rows, so each reaches the device in a single copy."""
    input_ids: list[int] = []
    positions: list[int] = []
    query_session: list[int] = []
    key_session: list[int] = []
    key_position: list[int] = []
    read_index: list[int] = []
    write_index: list[int] = []
    cu_q, cu_k = [0], [0]
    wanted_rows: list[range] = []
    wanted_index: list[int] = []
    for number, row in enumerate(rows):
        fed = len(row.new)
        input_ids += row.new
        positions += range(row.past, row.past + fed)
        query_session += [number] * fed
        total = row.past + fed
        key_session += [number] * total
        key_position += range(total)
        read, write = pool.indices(row.request_id, row.past, fed)
        read_index += read
        write_index += write
        cu_q.append(cu_q[-1] + fed)
        cu_k.append(cu_k[-1] + total)
        first = cu_q[-1] - row.wanted
        wanted_rows.append(range(len(wanted_index), len(wanted_index) + row.wanted))
        wanted_index += range(first, cu_q[-1])
    fed_total, read_total = cu_q[-1], cu_k[-1]
    query_tokens = token_bucket(fed_total) if bucketed else fed_total
    read_tokens = read_bucket(read_total) if bucketed else read_total
    if bucketed:  # padding: query rows of no session (-1), keys of no session (-2), reading and writing trash
        pad_q, pad_k = query_tokens - fed_total, read_tokens - read_total
        input_ids += [0] * pad_q
        positions += [0] * pad_q
        query_session += [-1] * pad_q
        write_index += [pool.write_trash] * pad_q
        key_session += [-2] * pad_k
        key_position += [0] * pad_k
        read_index += [pool.read_trash] * pad_k
        # A bucketed pass keeps every query row's logits: its output shape is fixed with its graph.
        wanted_rows = [range(cu_q[number + 1] - row.wanted, cu_q[number + 1]) for number, row in enumerate(rows)]
        wanted_index = list(range(query_tokens))
    device = pool.device

    def on_device(values: list[int], dtype: torch.dtype = torch.long) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)

    mask = causal_block_mask(
        on_device(query_session), on_device(positions), on_device(key_session), on_device(key_position), dtype
    )
    kwargs: dict[str, Any] = dict(
        input_ids=on_device(input_ids)[None],
        position_ids=on_device(positions)[None],
        attention_mask=mask,
        cu_seq_lens_q=on_device(cu_q, torch.int32),
        cu_seq_lens_k={"full_attention": on_device(cu_k, torch.int32)},
        max_length_q=max(len(row.new) for row in rows),
        max_length_k={"full_attention": max(row.past + len(row.new) for row in rows)},
        write_index=[on_device(write_index)],
        read_index=[on_device(read_index)],
        logits_to_keep=on_device(wanted_index),
        cache=pool.cache,
        use_cache=False,
        is_causal=False,
    )
    return PackedPass(kwargs, query_tokens, read_tokens, wanted_rows, bucketed)
