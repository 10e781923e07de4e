"""What a generation is asked to do and what it returns: shared by the engine, the edge client,
the round core and the benchmark, so none of them imports another for its types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgespec.core.gamma import AdaptiveGamma
from edgespec.core.grammar import Grammar
from edgespec.core.logprobs import TokenLogprob, check_top_logprobs
from edgespec.core.stats import GenerationStats

if TYPE_CHECKING:
    from edgespec.core.modes import Mode


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are chosen. ``temperature == 0`` means greedy (argmax)."""

    temperature: float = 0.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


GREEDY = SamplingParams()


# The draft's randomness is the edge's own; offsetting its seed keeps it independent of the
# server's verification uniforms while staying reproducible from one user-given seed.
DRAFT_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 128
    gamma: int = 4
    sampling: SamplingParams = SamplingParams()
    seed: int = 0
    eos_ids: frozenset[int] = field(default_factory=frozenset)
    # Pick each round's γ from measured costs (core/gamma.py), starting at ``gamma``.
    adaptive_gamma: bool = False
    max_gamma: int = 8
    # Pre-draft modes: at most this many pre-drafted branches per round, each on one assumed
    # verdict; ``guess_verdict`` starts one at send time on the draft's own guess (every token
    # accepted, its next token as the bonus), before any exit speaks. branches=1 without the guess
    # is the paper's pre-drafting (on the latest confident early verdict only).
    branches: int = 2
    guess_verdict: bool = True
    # Greedy pre-draft modes: fill the branches the guess leaves with *runner-up* branches, each
    # assuming a rejection where the draft was least sure, corrected to its runner-up token
    # (taken only while the session's own record says it pays: ``core/edge.py``). Off by
    # default: their gain is small, and where edge and verifier share a machine's memory the
    # extra drafting slows the verifies it runs beside by more than it wins.
    runner_up: bool = False
    # Greedy: end a block early after a token the draft itself gives less than this probability
    # (0: always draft the full γ). A dynamic draft length: blocks stop where rejection is likely,
    # so fewer drafted tokens are wasted and a whole-block guess is right more often. The default
    # (also `transformers`' for its assistant model) was chosen on held-out ShareGPT traces,
    # never on the benchmark's prompts.
    draft_stop: float = 0.4
    # Ask the server for early verdicts (it runs the exits for them): None decides by mode. sd-ee
    # measures them; pre-drafting without the guess has nothing else to go on; with the guess they
    # are off, since running the exits slows every verify while adding few hits the guess lacks.
    early_verdicts: bool | None = None
    # Ask the target for its log-probability of every committed token and this many likeliest
    # alternatives (None: none, and the greedy verifier reads only argmax ids).
    logprobs: int | None = None
    # The grammar the target's output must follow (None: free text); the verifier masks by it.
    grammar: Grammar | None = None

    def __post_init__(self) -> None:
        check_top_logprobs(self.logprobs)
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 1 <= self.gamma <= 64:
            raise ValueError(f"gamma must be in 1..64, got {self.gamma}")
        if not 1 <= self.branches <= 8:
            raise ValueError(f"branches must be in 1..8, got {self.branches}")
        if not 0.0 <= self.draft_stop < 1.0:
            raise ValueError(f"draft_stop must be in [0, 1), got {self.draft_stop}")
        if self.adaptive_gamma and not self.gamma <= self.max_gamma <= 64:
            raise ValueError(f"max_gamma must be in gamma..64, got {self.max_gamma}")

    @staticmethod
    def early_verdicts_from(text: str) -> bool | None:
        """``--early-verdicts`` as spelled on a command line or in a job: auto (by mode), on, off."""
        choices = {"auto": None, "on": True, "off": False}
        if text not in choices:
            raise ValueError(f"early verdicts are auto, on or off, got {text!r}")
        return choices[text]

    def wants_early_verdicts(self, mode: "Mode") -> bool:
        if not mode.uses_exits:
            return False
        return self.needs_exits(mode) if self.early_verdicts is None else self.early_verdicts

    def needs_exits(self, mode: "Mode") -> bool:
        """Whether ``mode`` cannot run without exits: sd-ee measures them, and pre-drafting
        without the send-time guess has nothing else to pre-draft on."""
        return mode.uses_exits and (mode.value == "sd-ee" or not self.guess_verdict)

    def draft_stop_below(self) -> float:
        """The confidence a greedy draft stops after (sampling always drafts the full γ)."""
        return self.draft_stop if self.sampling.greedy else 0.0

    def wants_alternatives(self, mode: "Mode") -> bool:
        """Whether the draft should keep each token's confidence and runner-up (``DraftBlock``)."""
        return self.runner_up and self.branches >= 2 and self.sampling.greedy and mode.predrafts

    def gamma_policy(self) -> AdaptiveGamma | None:
        return AdaptiveGamma(initial=self.gamma, max_gamma=self.max_gamma) if self.adaptive_gamma else None


@dataclass
class GenerationResult:
    tokens: list[int]  # generated ids only, prompt excluded
    stats: GenerationStats
    text: str = ""
    # With ``GenerationConfig.logprobs``: one entry per token the target decided, in order (a
    # token the draft alone decided during an outage, and kept, has none).
    logprobs: list[TokenLogprob] | None = None
