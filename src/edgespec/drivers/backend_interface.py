"""What the virtual-clock driver asks of its backends: the jobs a verifier runs and what a
draft costs. The real models (``real_backends.py``) and recorded traces (``trace_backends.py``)
implement the same two interfaces, so one driver runs the in-process engine and the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, Sequence

from edgespec.core.block import DraftBlock
from edgespec.core.verdict import Verdict
from edgespec.core.verifier import IncomingBlock
from edgespec.decoding.early import EarlyVerdict


class JobKind(StrEnum):
    PREFILL = "prefill"
    VERIFY = "verify"
    DECODE = "decode"
    DRAFT = "draft"  # cloud-sd: the server's own draft


@dataclass
class CloudJob:
    kind: JobKind
    session: int
    sequence: list[int]
    block: IncomingBlock | None = None
    with_exits: bool = False
    gamma: int = 0  # "draft": tokens to draft
    stop_below: float = 0.0  # "draft", greedy: end the block after a token the draft is less sure of

    def __post_init__(self) -> None:
        self.kind = JobKind(self.kind)


@dataclass(frozen=True)
class VerifyResult:
    verdict: Verdict
    early: list[EarlyVerdict]  # elapsed_s relative to the forward's start


class EdgeBackend(Protocol):
    def draft(self, sequence: Sequence[int], gamma: int, min_tokens: int = 1) -> tuple[DraftBlock, float]:
        """The block (at least ``min_tokens`` long, whatever a confidence stop says) and the seconds it cost."""


class CloudBackend(Protocol):
    def open(self, session: int, sampling: Any, seed: int) -> None: ...

    def run(self, jobs: list[CloudJob]) -> tuple[list[Any], float]:
        """Results per job (None, a token id, a VerifyResult, or a draft's DraftBlock) and the
        forward's seconds. A batch holds one kind of job: prefill alone, drafts together, or
        verifies and decodes together."""

    def close(self, session: int) -> None: ...
