"""Backends that replay a greedy trace and charge a hardware profile's costs: the simulator is
the virtual-clock driver (``drivers/virtual_clock.py``) with these instead of the real models."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

from edgespec.core.block import DraftBlock
from edgespec.core.verdict import Verdict
from edgespec.decoding.early import UNSCORED_BONUS, EarlyVerdict
from edgespec.drivers.backend_interface import CloudJob, JobKind, VerifyResult
from edgespec.drivers.cost_profile import HardwareProfile
from edgespec.drivers.trace import Trace
from edgespec.models.kv import valid_prefix

# Tokens no model emits: what the draft "says" past the point where the trace stops knowing
# (after its own first disagreement, or after a wrongly assumed verdict). They can never be
# accepted, since the target's tokens are the trace's.
UNKNOWN = -1


class TraceEdge:
    """The draft, as the trace says it drafts along the target's continuation."""

    def __init__(self, trace: Trace, profile: HardwareProfile, stop_below: float = 0.0) -> None:
        self.trace = trace
        self.profile = profile
        self.stop_below = stop_below  # as DraftRuntime.draft: end the block after a token less sure than this
        self._cached: list[int] = []  # what the draft's KV cache holds (a rollback keeps the common prefix)

    def draft(
        self, sequence: Sequence[int], gamma: int, min_tokens: int = 1, stop_below: float | None = None
    ) -> tuple[DraftBlock, float]:
        trace = self.trace
        start = len(trace.prompt_ids)
        position = len(sequence) - start
        known = list(sequence[:start]) == trace.prompt_ids and list(sequence[start:]) == trace.continuation[:position]
        tokens: list[int] = []
        confidence: list[float] = []
        runner_up: list[int] = []
        for step in range(gamma):
            index = position + step
            on_track = (
                known
                and index < len(trace.draft_argmax)
                and all(t == c for t, c in zip(tokens, trace.continuation[position:]))
            )
            if on_track:
                tokens.append(trace.draft_argmax[index])
                top_ids, top_probs = trace.draft_topk_ids[index], trace.draft_topk_probs[index]
                runner_up.append(next(i for i in top_ids if i != tokens[-1]))
                confidence.append(top_probs[0])
            else:
                # Past its first disagreement the trace does not know the draft's distribution:
                # its confidence is taken as the one along the target's text (a proxy), its
                # runner-up as an id never right (any branch assuming these tokens is a miss anyway).
                tokens.append(UNKNOWN - step)
                runner_up.append(UNKNOWN - gamma - step)
                confidence.append(
                    trace.draft_topk_probs[index][0] if known and index < len(trace.draft_topk_probs) else 0.5
                )
            if confidence[-1] < (self.stop_below if stop_below is None else stop_below) and step + 1 >= min_tokens:
                break
        common = valid_prefix(self._cached, sequence)  # the same rollback as the real cache
        # As DraftRuntime: feed what the cache lacks, then one token per step; the last drafted
        # token stays unfed.
        self._cached = list(sequence) + tokens[:-1]
        return DraftBlock(tokens, confidence=confidence, runner_up=runner_up), self.profile.draft_s(
            len(tokens), len(sequence) - common
        )


@dataclass(frozen=True)
class ExitOracle:
    """A hypothetical exit for design questions ("what would exits at layer L be worth if they
    cost nothing and were right this often?"): after ``layer`` of the target's layers it streams
    the round's true verdict with probability ``accuracy`` and a wrong one otherwise, always
    confidently, at no cost. It replaces the trace's own exits."""

    layer: int
    accuracy: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.layer < 1 or not 0.0 <= self.accuracy <= 1.0:
            raise ValueError(
                f"an exit oracle needs layer >= 1 and accuracy in [0, 1], got {self.layer}, {self.accuracy}"
            )

    @staticmethod
    def parse(text: str) -> "ExitOracle":
        """``LAYER`` or ``LAYER:ACCURACY``, e.g. ``21:0.5``."""
        layer, _, accuracy = text.partition(":")
        try:
            return ExitOracle(int(layer), float(accuracy) if accuracy else 1.0)
        except ValueError as error:
            raise ValueError(
                f"--exit-oracle takes LAYER or LAYER:ACCURACY (e.g. 21:0.5), got {text!r}: {error}"
            ) from None

    def verdict(self, trace_id: str, position: int, truth: Verdict) -> Verdict:
        # Keyed by where the round is, so every mode sees the same exit on the same round.
        right = random.Random(f"{self.seed}/{trace_id}/{position}/{truth.accepted}").random() < self.accuracy
        return truth if right else Verdict(truth.accepted, UNKNOWN)


class TraceCloud:
    """The target and its exits, as the trace says they decide, at the profile's costs; in
    cloud-sd also the server's draft (the trace's draft, at the profile's server-draft costs)."""

    def __init__(
        self,
        traces: dict[int, Trace],
        profile: HardwareProfile,
        exit_oracle: ExitOracle | None = None,
        exit_candidates: bool = True,
    ) -> None:
        self.traces = traces
        self.profile = profile
        self.exit_oracle = exit_oracle
        # As `serve`: exits score only the draft's candidate ids (where the traces recorded them).
        self.exit_candidates = exit_candidates
        self._drafts: dict[int, TraceEdge] = {}  # cloud-sd: each session's draft cache on the server

    def open(self, session: int, sampling: Any, seed: int) -> None:
        if not sampling.greedy:
            raise ValueError("traces replay greedy decoding only")

    def close(self, session: int) -> None:
        self._drafts.pop(session, None)

    def run(self, jobs: list[CloudJob]) -> tuple[list[Any], float]:
        profile = self.profile
        singles, results = [], []
        for job in jobs:
            trace = self.traces[job.session]
            if job.kind is JobKind.DRAFT:
                if job.session not in self._drafts:
                    self._drafts[job.session] = TraceEdge(trace, profile.server_drafter())
                block, cost = self._drafts[job.session].draft(job.sequence, job.gamma, stop_below=job.stop_below)
                singles.append(cost)
                results.append(block)
                continue
            if job.kind is JobKind.PREFILL:
                singles.append(profile.prefill_s(len(job.sequence)))
                results.append(None)
                continue
            position = len(job.sequence) - len(trace.prompt_ids)
            if job.kind is JobKind.DECODE:
                singles.append(profile.forward_s(1))
                results.append(trace.continuation[position])
                continue
            assert job.block is not None
            exits = len(trace.exits) if job.with_exits and self.exit_oracle is None else 0
            cost = profile.forward_s(len(job.block.tokens) + 1, exits, candidates=self._candidates(trace))
            singles.append(cost)
            results.append((trace, position, job))
        total = (
            profile.batch_s(singles, decodes=all(job.kind is JobKind.DECODE for job in jobs))
            if len(jobs) > 1
            else singles[0]
        )
        return [self._verify(*r, total) if isinstance(r, tuple) else r for r in results], total

    def _verify(self, trace: Trace, position: int, job: CloudJob, forward_s: float) -> VerifyResult:
        assert job.block is not None
        tokens = job.block.tokens
        truth = trace.continuation[position:]
        compared = len(tokens)
        if len(truth) < len(tokens) + 1:
            if not trace.ended_in_eos:
                raise ValueError(
                    f"trace {trace.id} ends at {len(trace.continuation)} tokens: "
                    "record it with a larger --max-new-tokens"
                )
            # The text ends inside this block: the verdict ends with the target's EOS (what the
            # draft wrote after it is never committed, so it needs no record).
            compared = len(truth) - 1
        accepted = 0
        while accepted < compared and tokens[accepted] == truth[accepted]:
            accepted += 1
        verdict = Verdict(accepted, truth[accepted])
        early = []
        oracle = self.exit_oracle
        if job.with_exits and oracle is not None:
            guess = oracle.verdict(trace.id, position, verdict)
            early.append(EarlyVerdict(oracle.layer, guess, 1.0, forward_s * oracle.layer / trace.num_layers, True))
        elif job.with_exits:
            replay = self._early_candidates if self._candidates(trace) else self._early
            for layer, exit_trace in sorted(trace.exits.items(), key=lambda item: int(item[0])):
                early.append(
                    replay(int(layer), exit_trace, tokens, truth, position, accepted, trace.num_layers, forward_s)
                )
        return VerifyResult(verdict, early)

    def _candidates(self, trace: Trace) -> bool:
        return self.exit_candidates and all(e.candidate_argmax is not None for e in trace.exits.values())

    @staticmethod
    def _early_candidates(
        layer: int,
        exit_trace: Any,
        tokens: list[int],
        truth: list[int],
        position: int,
        accepted: int,
        num_layers: int,
        forward_s: float,
    ) -> EarlyVerdict:
        """A candidate-id exit (``candidate_verdict``): along the target's text the draft's
        candidates are the trace's, so its choice is known up to the first rejection."""
        choice = exit_trace.candidate_argmax[position:]
        sure = exit_trace.candidate_confidence[position:]
        at = forward_s * layer / num_layers
        n = 0
        while n < len(tokens) and n <= accepted and tokens[n] == choice[n]:
            n += 1
        if n > accepted:
            # It accepted a token the target rejects: past that the trace does not know its
            # choices, but whatever it streams is wrong (and a whole accepted block streams nothing).
            confidence = min(sure[: accepted + 1])
            return EarlyVerdict(
                layer, Verdict(n, UNKNOWN), confidence, at, n < len(tokens) and confidence >= exit_trace.threshold
            )
        if n == len(tokens):
            return EarlyVerdict(layer, Verdict(n, UNSCORED_BONUS), min(sure[:n]), at, False)
        confidence = min(sure[: n + 1])
        return EarlyVerdict(layer, Verdict(n, choice[n]), confidence, at, confidence >= exit_trace.threshold)

    @staticmethod
    def _early(
        layer: int,
        exit_trace: Any,
        tokens: list[int],
        truth: list[int],
        position: int,
        accepted: int,
        num_layers: int,
        forward_s: float,
    ) -> EarlyVerdict:
        choice = exit_trace.argmax[position:]
        sure = exit_trace.confidence[position:]
        n = 0
        while n < len(tokens) and n <= accepted and tokens[n] == choice[n]:
            n += 1
        if n > accepted:
            # The exit agrees with the draft where the target does not: from here on the trace
            # has no record of the exit (its context holds a token the target rejected), but the
            # verdict is wrong whatever it says. Replayed as a miss, with the confidence known so far.
            verdict, confidence = Verdict(n, UNKNOWN), min(sure[: accepted + 1])
        else:
            verdict, confidence = Verdict(n, choice[n]), min(sure[: n + 1])
        return EarlyVerdict(
            layer, verdict, confidence, forward_s * layer / num_layers, confidence >= exit_trace.threshold
        )
