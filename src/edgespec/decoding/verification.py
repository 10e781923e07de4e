"""The verification rule: pure functions from (target logits, draft block) to a verdict.

A verdict is ``(accepted, next_token)``: the number of draft tokens the target keeps and the token
that follows them — the *recovered* token at the first rejected position, or the *bonus* token when
the whole block is accepted. The same functions turn an exit's logits into an *early verdict*, so an
early verdict is exactly the verdict the server would give if that exit were the last layer.

Sampling follows Leviathan et al. 2023 / Chen et al. 2023: accept draft token x with probability
min(1, p(x) / q(x)); on rejection draw from norm(max(0, p - q)); if all are accepted draw the bonus
from p. Every random choice is made through uniforms handed in by the caller, so a verdict is a
deterministic function of its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from edgespec.core.config import SamplingParams
from edgespec.core.verdict import Verdict
from edgespec.sampling import logits_to_probs, position_uniforms, sample_with_uniform


@dataclass(frozen=True)
class RoundUniforms:
    """The randomness of one sampled round: an acceptance uniform per draft token, and a
    resampling uniform per position the next token can land on (gamma + 1). A round consults the
    acceptance uniforms up to its first rejection and one resampling uniform, never more."""

    accept: tuple[float, ...]
    resample: tuple[float, ...]

    @staticmethod
    def draw(generator: torch.Generator, gamma: int) -> "RoundUniforms":
        """Sequential draws: gamma + 1 values from ``generator`` (one resampling uniform serves
        every position, since a round consults only one)."""
        values = torch.rand(gamma + 1, generator=generator, dtype=torch.float64).tolist()
        return RoundUniforms(accept=tuple(values[:gamma]), resample=(values[gamma],) * (gamma + 1))

    @staticmethod
    def at(seed: int, start: int, gamma: int) -> "RoundUniforms":
        """Position-tied draws for a block whose first token sits at absolute position ``start``.

        Each position owns one (accept, resample) pair keyed by (seed, position), so a verdict does
        not depend on how many rounds came before: a session resumed after an outage, whose
        rounds restart from the committed text, decides every position with the same uniforms as
        an uninterrupted one. Still lossless: a position's pair is consulted only in the round
        that decides that position (a rejection before it leaves it unread; once decided it is
        committed), so every consulted uniform is fresh and independent of the history so far.
        """
        pairs = [position_uniforms(seed, start + offset, 2) for offset in range(gamma + 1)]
        return RoundUniforms(accept=tuple(pair[0] for pair in pairs[:gamma]), resample=tuple(pair[1] for pair in pairs))

    @staticmethod
    def for_decode(seed: int, position: int) -> float:
        """The target's draw for one autoregressively decoded token at ``position`` (cloud-ar):
        the resampling uniform a round would use there, so both decide it alike."""
        return RoundUniforms.at(seed, position, 0).resample[0]


def greedy_verdict(target_logits: torch.Tensor, draft_tokens: Sequence[int]) -> Verdict:
    """``target_logits``: [gamma + 1, vocab], row i scores the token after draft position i - 1."""
    _check_shapes(target_logits, len(draft_tokens))
    return greedy_verdict_from_choices(torch.argmax(target_logits, dim=-1).tolist(), draft_tokens)


def greedy_verdict_from_choices(target_choice: Sequence[int], draft_tokens: Sequence[int]) -> Verdict:
    """The same from the target's argmax ids alone (gamma + 1 of them): what a greedy session's
    forward returns (``ScoreRequest.argmax_only``)."""
    gamma = len(draft_tokens)
    if len(target_choice) != gamma + 1:
        raise ValueError(f"expected {gamma + 1} target choices for {gamma} draft tokens, got {len(target_choice)}")
    accepted = 0
    while accepted < gamma and int(target_choice[accepted]) == int(draft_tokens[accepted]):
        accepted += 1
    return Verdict(accepted=accepted, next_token=int(target_choice[accepted]))


def rejection_sample_verdict(
    target_probs: torch.Tensor,
    draft_tokens: Sequence[int],
    draft_probs: torch.Tensor,
    uniforms: RoundUniforms,
) -> Verdict:
    """Lossless speculative sampling.

    ``target_probs``: [gamma + 1, vocab]; ``draft_probs``: [gamma, vocab], the distributions the
    draft tokens were drawn from (after the same logit processing as the target's).
    """
    gamma = len(draft_tokens)
    _check_shapes(target_probs, gamma)
    if draft_probs.shape != (gamma, target_probs.shape[-1]):
        raise ValueError(f"draft_probs must be [{gamma}, {target_probs.shape[-1]}], got {tuple(draft_probs.shape)}")
    if len(uniforms.accept) < gamma or len(uniforms.resample) < gamma + 1:
        raise ValueError(
            f"need {gamma} acceptance and {gamma + 1} resampling uniforms, "
            f"got {len(uniforms.accept)} and {len(uniforms.resample)}"
        )
    for position, token in enumerate(draft_tokens):
        p = float(target_probs[position, token])
        q = float(draft_probs[position, token])
        # q == 0 cannot come from an honest draft; rejecting keeps the output distribution exact.
        if q > 0 and uniforms.accept[position] < min(1.0, p / q):
            continue
        recovered = _recovered_distribution(target_probs[position], draft_probs[position])
        return Verdict(accepted=position, next_token=sample_with_uniform(recovered, uniforms.resample[position]))
    bonus = sample_with_uniform(target_probs[gamma], uniforms.resample[gamma])
    return Verdict(accepted=gamma, next_token=bonus)


def verdict_from_logits(
    logits: torch.Tensor,
    draft_tokens: Sequence[int],
    params: SamplingParams,
    draft_probs: torch.Tensor | None = None,
    uniforms: RoundUniforms | None = None,
) -> Verdict:
    """One entry point for final and early verdicts alike."""
    if params.greedy:
        return greedy_verdict(logits, draft_tokens)
    if draft_probs is None or uniforms is None:
        raise ValueError("sampled verification needs the draft probabilities and the round's uniforms")
    return rejection_sample_verdict(logits_to_probs(logits, params), draft_tokens, draft_probs, uniforms)


def verdict_confidence(logits: torch.Tensor, verdict: Verdict) -> float:
    """How sure a head is of its verdict: the lowest top-1 probability over the positions that
    decide it (every accepted position and the one that yields the next token)."""
    probs = logits[: verdict.accepted + 1].float().softmax(dim=-1)
    return float(probs.max(dim=-1).values.min())


def _recovered_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    residual = torch.clamp(p.double() - q.double(), min=0.0)
    total = float(residual.sum())
    # p == q everywhere leaves no residual mass; then a rejection is impossible except through
    # rounding, and p itself is the right distribution to fall back on.
    return residual / total if total > 0 else p.double()


def _check_shapes(logits: torch.Tensor, gamma: int) -> None:
    if logits.dim() != 2 or logits.shape[0] != gamma + 1:
        raise ValueError(
            f"expected logits of shape [{gamma + 1}, vocab] for {gamma} draft tokens, got {tuple(logits.shape)}"
        )
