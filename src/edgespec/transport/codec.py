"""Between wire messages and the library's own types; the one place that knows both."""

from __future__ import annotations

from typing import Sequence

import torch

from edgespec.decoding.sampling import SamplingParams
from edgespec.decoding.verification import Verdict
from edgespec.transport import edgespec_pb2 as pb

PROTOCOL_VERSION = 1
# gRPC's own framing per message (compressed flag + length): counted so byte totals are honest.
GRPC_FRAME_BYTES = 5


class ProtocolError(Exception):
    """A message the other side should not have sent; ``code`` says which kind."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def sampling_to_wire(params: SamplingParams) -> pb.Sampling:
    return pb.Sampling(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p)


def sampling_from_wire(message: pb.Sampling) -> SamplingParams:
    top_p = message.top_p if 0.0 < message.top_p <= 1.0 else 1.0
    try:
        # float32 on the wire: round so 0.7 stays 0.7 and both sides compute the same logits.
        return SamplingParams(temperature=round(float(message.temperature), 6), top_k=int(message.top_k), top_p=round(float(top_p), 6))
    except ValueError as error:
        raise ProtocolError(pb.BAD_REQUEST, f"bad sampling parameters: {error}") from None


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
        if len(row.ids) != len(row.probs) or not row.ids:
            raise ProtocolError(pb.BAD_REQUEST, f"draft distribution {index}: ids and probs must be equal, non-empty lists")
        if max(row.ids) >= vocab_size:
            raise ProtocolError(pb.OUT_OF_VOCABULARY, f"draft distribution {index} names a token outside the vocabulary")
        values = torch.tensor(list(row.probs), dtype=torch.float32)
        if not torch.isfinite(values).all() or (values < 0).any() or float(values.sum()) <= 0:
            raise ProtocolError(pb.BAD_REQUEST, f"draft distribution {index} is not a probability distribution")
        dense[index, torch.tensor(list(row.ids), dtype=torch.long)] = values
    return dense


def verdict_of(message: pb.FinalVerdict | pb.EarlyVerdict | pb.Assumption) -> Verdict:
    return Verdict(accepted=int(message.accepted), next_token=int(message.next_token))


def wire_size(message: pb.ClientMessage | pb.ServerMessage) -> int:
    return message.ByteSize() + GRPC_FRAME_BYTES
