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
    slots: int = 0  # per-session layout: sessions' slots (0: packed, block-diagonal)

    @property
    def shape_key(self) -> tuple[int, int, int]:
        return self.query_tokens, self.read_tokens, self.slots


def per_session_pays(rows: Sequence[PassRow], hidden: int) -> bool:
    """Whether the per-session layout (``paged_attention.py``) costs less than the packed one: the
    packed pass's attention scores every query against every read row, the per-session one pads
    each session's queries to the widest (so its projections and MLP run on padding). A token's
    non-attention work is counted as about 6 x hidden attention cells (24 h^2 flops against 4 h)."""
    fed = [len(row.new) for row in rows]
    total = [row.past + len(row.new) for row in rows]
    packed = sum(fed) * sum(total) + 6 * hidden * sum(fed)
    per_session = len(rows) * max(fed) * max(total) + 6 * hidden * len(rows) * max(fed)
    return per_session < packed


# Slot widths of a bucketed per-session pass: powers of two and three times them (1, 2, 3, 4, 6, 8, 12, ...),
# so a verify block's 5 rows pad to 6, not 8.
_WIDTHS = sorted({1 << k for k in range(16)} | {3 << k for k in range(15)})


def width_bucket(count: int) -> int:
    return next(width for width in _WIDTHS if width >= count)


def slot_bucket(count: int) -> int:
    return 1 << (count - 1).bit_length()


def token_bucket(count: int) -> int:
    """Query tokens of a bucketed packed pass: a power of two, at least ``SMALLEST_TOKEN_BUCKET``."""
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


def pack_per_session(pool: SessionPool, rows: Sequence[PassRow], dtype: torch.dtype, bucketed: bool) -> PackedPass:
    """The inputs of one pass in the per-session layout (``paged_attention.py``): session b's new
    tokens at query positions [b x width, b x width + fed), its history read into rows
    [b x span, (b + 1) x span) (the pool's own read indices, padded with its trash row), and a
    [slots, 1, width, span] causal mask. Padding writes to the pool's trash rows and sees nothing.

    Long because it fills the slots' parallel arrays in one walk over the rows."""
    fed = [len(row.new) for row in rows]
    totals = [row.past + len(row.new) for row in rows]
    slots = slot_bucket(len(rows)) if bucketed else len(rows)
    width = width_bucket(max(fed)) if bucketed else max(fed)
    span = read_bucket(max(totals)) if bucketed else max(totals)
    input_ids = [0] * (slots * width)
    positions = [0] * (slots * width)
    write_index = [pool.write_trash] * (slots * width)
    read_index = [pool.read_trash] * (slots * span)
    query_position = [-1] * (slots * width)  # -1: padding, sees no key
    wanted_rows: list[range] = []
    for number, row in enumerate(rows):
        read, write = pool.indices(row.request_id, row.past, len(row.new))
        first = number * width
        input_ids[first : first + fed[number]] = row.new
        positions[first : first + fed[number]] = range(row.past, totals[number])
        query_position[first : first + fed[number]] = range(row.past, totals[number])
        write_index[first : first + fed[number]] = write
        read_index[number * span : number * span + totals[number]] = read
        wanted_rows.append(range(first + fed[number] - row.wanted, first + fed[number]))
    wanted_index = list(range(slots * width)) if bucketed else [i for rows_ in wanted_rows for i in rows_]
    if not bucketed:
        offsets, kept = [], 0
        for wanted in wanted_rows:
            offsets.append(range(kept, kept + len(wanted)))
            kept += len(wanted)
        wanted_rows = offsets
    device = pool.device

    def on_device(values: list[int], dtype: torch.dtype = torch.long) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)

    queries = on_device(query_position).view(slots, 1, width, 1)
    keys = torch.arange(span, device=device).view(1, 1, 1, span)
    mask = torch.zeros((slots, 1, width, span), dtype=dtype, device=device)
    mask.masked_fill_(keys > queries, torch.finfo(dtype).min)  # padding rows (-1) see nothing
    cu_q = [0]
    cu_k = [0]
    for count, total in zip(fed, totals):
        cu_q.append(cu_q[-1] + count)
        cu_k.append(cu_k[-1] + total)
    kwargs: dict[str, Any] = dict(
        input_ids=on_device(input_ids)[None],
        position_ids=on_device(positions)[None],
        attention_mask=mask,
        cu_seq_lens_q=on_device(cu_q, torch.int32),
        cu_seq_lens_k={"full_attention": on_device(cu_k, torch.int32)},
        max_length_q=max(fed),
        max_length_k={"full_attention": max(totals)},
        write_index=[on_device(write_index)],
        read_index=[on_device(read_index)],
        logits_to_keep=on_device(wanted_index),
        cache=pool.cache,
        use_cache=False,
        is_causal=False,
        session_slots=slots,
    )
    return PackedPass(kwargs, slots * width, slots * span, wanted_rows, bucketed, slots)
