"""Turning logits into the distribution a token is drawn from, and drawing it reproducibly.

Both sides of a speculative round must agree on what "the target's distribution" is, so the
logit processing (temperature, top-k, top-p) lives in one place and is applied identically to the
target, the draft and every exit.
"""

from __future__ import annotations

import torch

from edgespec.core.config import SamplingParams


def logits_to_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Probabilities over the vocabulary, in float32. ``logits``: [..., vocab]."""
    if params.greedy:
        raise ValueError("greedy decoding has no sampling distribution; use argmax")
    scores = logits.float() / params.temperature
    if params.top_k > 0 and params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
        sorted_probs = sorted_scores.softmax(dim=-1)
        # Keep the smallest prefix whose mass reaches top_p; the first token is always kept.
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop_sorted = mass_before >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores.softmax(dim=-1)


def sample_with_uniform(probs: torch.Tensor, uniform: float) -> int:
    """Inverse-CDF draw from ``probs`` [vocab] with a given uniform in [0, 1).

    Drawing through an explicit uniform (not ``torch.multinomial``) makes a draw a deterministic
    function of (probabilities, uniform): the server and an early exit can apply the *same*
    uniform to different distributions, and a replay over the network reproduces it exactly.
    """
    cdf = probs.double().cumsum(dim=-1)
    target = uniform * float(cdf[-1])
    index = int(torch.searchsorted(cdf, torch.tensor([target], dtype=cdf.dtype), right=True)[0])
    index = min(index, probs.shape[-1] - 1)
    # searchsorted can land on a zero-probability slot only through rounding at the very top.
    while probs[index] <= 0 and index > 0:
        index -= 1
    return index


def choose_token(logits: torch.Tensor, params: SamplingParams, uniform: float | None = None) -> int:
    """One next token from last-position ``logits`` [vocab]: argmax, or a draw with ``uniform``."""
    if params.greedy:
        return int(torch.argmax(logits))
    if uniform is None:
        raise ValueError("sampling needs a uniform draw")
    return sample_with_uniform(logits_to_probs(logits, params), uniform)


def token_from_forward(scored: torch.Tensor, params: SamplingParams, uniform: float | None = None) -> int:
    """One next token from what a target forward returned for the last position: for a greedy
    session the argmax id itself (``ScoreRequest.argmax_only``), else its logits [vocab] (a greedy
    session that reads log-probabilities gets logits too)."""
    if params.greedy:
        return int(scored) if scored.dim() == 0 else int(torch.argmax(scored))
    return choose_token(scored, params, uniform)


def position_uniform(seed: int, position: int) -> float:
    """A uniform fixed by (seed, absolute position): the draft's randomness.

    Tying the draft's draw to the position it fills, not to how many draws came before, makes a
    pre-draft that hits identical to the draft that would have been made after the verdict, so a
    seeded sampled generation gives the same text in every speculative mode (for the same draft
    and γ), in process or over the network.
    A position is only ever re-drafted after a rejection *before* it, which does not depend on
    this draw, so reuse leaves it independent of everything the verifier has seen.
    """
    return position_uniforms(seed, position, 1)[0]


def position_uniforms(seed: int, position: int, count: int) -> list[float]:
    """``count`` uniforms fixed by (seed, absolute position); the first is ``position_uniform``."""
    generator = seeded_generator((seed * 1_000_003 + position) % (2**63))
    return torch.rand(count, generator=generator, dtype=torch.float64).tolist()


def seeded_generator(seed: int) -> torch.Generator:
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator


def restrict_support(probs: torch.Tensor, limit: int) -> torch.Tensor:
    """Keep the ``limit`` most likely tokens of ``probs`` [vocab] and renormalise.

    The draft samples from this restricted distribution so that a block's draft probabilities fit
    on the wire as ``limit`` (id, p) pairs per token. Verification stays lossless for any draft
    distribution, as long as the one sent is exactly the one sampled from.
    """
    if limit <= 0 or int((probs > 0).sum()) <= limit:
        return probs
    values, ids = torch.topk(probs, limit)
    restricted = torch.zeros_like(probs)
    restricted[ids] = values / values.sum()
    return restricted
