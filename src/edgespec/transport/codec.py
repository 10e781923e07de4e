"""Between wire messages and the library's own types; the one place that knows both."""

from __future__ import annotations

from typing import Sequence

import torch

from edgespec.core.config import SamplingParams
from edgespec.core.grammar import Grammar
from edgespec.core.logprobs import MAX_TOP_LOGPROBS, TokenLogprob
from edgespec.core.verdict import Verdict
from edgespec.transport import edgespec_pb2 as pb

PROTOCOL_VERSION = 1
# gRPC's own framing per message (compressed flag + length): counted so byte totals are honest.
GRPC_FRAME_BYTES = 5
# Below this a temperature overflows float32 logits to inf (NaN probabilities); above it sampling
# is uniform noise. Either is a client mistake worth a clear error.
MIN_TEMPERATURE = 1e-3
MAX_TEMPERATURE = 100.0
# A draft row (a softmax, maybe restricted and renormalised) sums to 1 up to float32 rounding.
PROB_SUM_TOLERANCE = 1e-3


class ProtocolError(Exception):
    """A message the other side should not have sent; ``code`` says which kind."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def sampling_to_wire(params: SamplingParams) -> pb.Sampling:
    return pb.Sampling(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p)


def sampling_from_wire(message: pb.Sampling) -> SamplingParams:
    """top_k >= the vocabulary size filters nothing, like 0, so any top_k is valid."""
    temperature, top_p = float(message.temperature), float(message.top_p)
    if not (temperature == 0.0 or MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE):
        raise ProtocolError(
            pb.BAD_REQUEST,
            f"temperature must be 0 (greedy) or in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}], got {temperature}",
        )
    if not 0.0 <= top_p <= 1.0:  # NaN fails this too
        raise ProtocolError(pb.BAD_REQUEST, f"top_p must be in [0, 1] (0 or 1: off), got {top_p}")
    # float32 on the wire: round so 0.7 stays 0.7 and both sides compute the same logits.
    return SamplingParams(
        temperature=round(temperature, 6), top_k=int(message.top_k), top_p=round(top_p, 6) if top_p > 0 else 1.0
    )


def distributions_to_wire(probs: torch.Tensor | None) -> list[pb.SparseDistribution]:
    """[gamma, vocab] (mostly zero) -> one sparse row per draft token."""
    if probs is None:
        return []
    rows = []
    for row in probs:
        ids = torch.nonzero(row, as_tuple=True)[0]
        rows.append(pb.SparseDistribution(ids=ids.tolist(), probs=row[ids].tolist()))
    return rows


def distributions_from_wire(rows: Sequence[pb.SparseDistribution], vocab_size: int) -> torch.Tensor:
    dense = torch.zeros(len(rows), vocab_size, dtype=torch.float32)
    for index, row in enumerate(rows):
        check_distribution(index, row, vocab_size)
        dense[index, torch.tensor(list(row.ids), dtype=torch.long)] = torch.tensor(list(row.probs), dtype=torch.float32)
    return dense


def candidates_to_wire(candidates: torch.Tensor | None) -> list[pb.CandidateIds]:
    """[gamma, k] draft top-k ids -> one row per draft token (none when not recorded)."""
    return [] if candidates is None else [pb.CandidateIds(ids=row.tolist()) for row in candidates]


def candidates_from_wire(rows: Sequence[pb.CandidateIds]) -> torch.Tensor | None:
    """The rows as a [gamma, k] int64 tensor; rows of unequal length are cut to the shortest
    (each keeps its first, likeliest ids). None when the block carries none."""
    if not rows:
        return None
    width = min(len(row.ids) for row in rows)
    return torch.tensor([list(row.ids)[:width] for row in rows], dtype=torch.long)


def check_distribution(index: int, row: pb.SparseDistribution, vocab_size: int) -> None:
    """A draft row must be a distribution over distinct in-vocabulary ids, or the rejection rule
    (which divides by it) would compute nonsense."""
    if len(row.ids) != len(row.probs) or not row.ids:
        raise ProtocolError(pb.BAD_REQUEST, f"draft distribution {index}: ids and probs must be equal, non-empty lists")
    if max(row.ids) >= vocab_size:
        raise ProtocolError(
            pb.OUT_OF_VOCABULARY, f"draft distribution {index} names a token outside the vocabulary (size {vocab_size})"
        )
    if len(set(row.ids)) != len(row.ids):
        raise ProtocolError(pb.BAD_REQUEST, f"draft distribution {index} names a token twice")
    values = torch.tensor(list(row.probs), dtype=torch.float32)
    if not torch.isfinite(values).all() or (values < 0).any() or abs(float(values.sum()) - 1) > PROB_SUM_TOLERANCE:
        raise ProtocolError(
            pb.BAD_REQUEST, f"draft distribution {index} is not a probability distribution (finite, >= 0, summing to 1)"
        )


def logprobs_request(message: pb.Open) -> int | None:
    """What an open asks for: None (no log-probabilities) or how many alternatives per token."""
    if not message.logprobs:
        if message.top_logprobs:
            raise ProtocolError(pb.BAD_REQUEST, "top_logprobs needs logprobs")
        return None
    if message.top_logprobs > MAX_TOP_LOGPROBS:
        wanted = message.top_logprobs
        raise ProtocolError(pb.BAD_REQUEST, f"top_logprobs must be at most {MAX_TOP_LOGPROBS}, got {wanted}")
    return int(message.top_logprobs)


def grammar_to_wire(grammar: Grammar) -> pb.Grammar:
    return pb.Grammar(kind=grammar.kind, source=grammar.source, vocabulary=grammar.vocabulary)


def grammar_from_wire(message: pb.Open) -> Grammar | None:
    """The grammar an open asks for (None: free text)."""
    if not message.HasField("grammar"):
        return None
    try:
        return Grammar(message.grammar.kind, message.grammar.source, message.grammar.vocabulary)
    except ValueError as error:
        raise ProtocolError(pb.BAD_REQUEST, str(error)) from None


def logprobs_to_wire(entries: Sequence[TokenLogprob]) -> list[pb.TokenLogprob]:
    return [
        pb.TokenLogprob(
            token=entry.token,
            logprob=entry.logprob,
            top_ids=[token for token, _ in entry.top],
            top_logprobs=[value for _, value in entry.top],
        )
        for entry in entries
    ]


def logprobs_from_wire(rows: Sequence[pb.TokenLogprob]) -> list[TokenLogprob]:
    return [
        TokenLogprob(int(row.token), float(row.logprob), tuple(zip((int(i) for i in row.top_ids), row.top_logprobs)))
        for row in rows
    ]


def verdict_of(message: pb.FinalVerdict | pb.EarlyVerdict | pb.Assumption) -> Verdict:
    return Verdict(accepted=int(message.accepted), next_token=int(message.next_token))


def wire_size(message: pb.ClientMessage | pb.ServerMessage) -> int:
    return message.ByteSize() + GRPC_FRAME_BYTES
