"""Exit thresholds from expected gain: stream an early verdict when what a right one saves in the
client's mode outweighs what a wrong one costs, not at a fixed precision.

Times are relative to the start of a round's verify at the server (length ``verify_s``), with the
client ``one_way_s`` away drafting at ``draft_s`` per token. An exit after layer L of N reads at
``verify_s * L / N``. Without early verdicts the next block reaches the server at
``verify_s + one_way + block + one_way`` (verdict out, draft, block in). A *right* rejection hint
lets the client draft that branch from the moment it hears it (after the send-time guess's own
γ + 1 tokens, which the single draft thread finishes first): the branch arrives earlier
(pipelined: shipped at once and verified the moment the verdict holds; pre-draft: sent when the
final verdict confirms it). A *wrong* hint costs the edge a useless branch, cancelled when the
final verdict arrives: at most one draft step of delay to the right block. A wrong hint cannot
cost the guess (both are held as branches), and a right hint is never a right guess (the guess
assumes the whole block accepted; candidate exits stream only rejections).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

from edgespec.exits.calibration import GRID, NEVER


@dataclass(frozen=True)
class RoundCosts:
    verify_s: float
    draft_s: float  # per drafted token, on the edge
    one_way_s: float
    gamma: int = 4
    num_layers: int = 28
    guess: bool = True  # the send-time guess drafts first (γ + 1 tokens) on the one draft thread

    def exit_at_s(self, layer: int) -> float:
        return self.verify_s * layer / self.num_layers

    def hit_saving_s(self, layer: int, pipelined: bool) -> float:
        """Seconds a right rejection hint from ``layer`` saves on the next verify's start."""
        block = self.gamma * self.draft_s
        heard = self.exit_at_s(layer) + self.one_way_s
        guess_done = (self.gamma + 1) * self.draft_s - self.one_way_s if self.guess else 0.0
        drafted = max(heard, guess_done) + block
        baseline = self.verify_s + 2 * self.one_way_s + block
        if pipelined:
            arrives = max(self.verify_s, drafted + self.one_way_s)
        else:
            arrives = max(self.verify_s + self.one_way_s, drafted) + self.one_way_s
        return max(0.0, baseline - arrives)

    def miss_cost_s(self) -> float:
        return self.draft_s

    def describe(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def expected_saving_s(
    confidence: torch.Tensor,
    correct: torch.Tensor,
    streamable: torch.Tensor,
    threshold: float,
    saving_s: float,
    miss_cost_s: float,
) -> float:
    """Mean seconds saved per round if this exit streams at ``threshold``."""
    cleared = (confidence >= threshold) & streamable
    hits = int((cleared & correct).sum())
    misses = int((cleared & ~correct).sum())
    return (hits * saving_s - misses * miss_cost_s) / max(int(confidence.numel()), 1)


def pick_threshold_by_gain(
    confidence: Sequence[float] | torch.Tensor,
    correct: Sequence[bool] | torch.Tensor,
    streamable: Sequence[bool] | torch.Tensor,
    saving_s: float,
    miss_cost_s: float,
    min_count: int = 10,
    grid: Sequence[float] = GRID,
) -> tuple[float, float]:
    """(threshold, mean seconds saved per round): the grid threshold saving the most, among
    those that at least ``min_count`` rounds clear; ``NEVER`` when none saves anything."""
    conf = torch.as_tensor(confidence, dtype=torch.float64)
    right = torch.as_tensor(correct, dtype=torch.bool)
    can = torch.as_tensor(streamable, dtype=torch.bool)
    best, best_saving = NEVER, 0.0
    for threshold in grid:
        if int(((conf >= threshold) & can).sum()) < min_count:
            continue
        saving = expected_saving_s(conf, right, can, threshold, saving_s, miss_cost_s)
        if saving > best_saving:
            best, best_saving = float(threshold), saving
    return best, best_saving


def gain_rule(costs: RoundCosts, min_count: int) -> str:
    return (
        "per mode, the grid threshold (0.00..1.00, step 0.01) maximising the mean time saved per round on the "
        f"calibration rounds: a right rejection hint saves the head start it gives the next block, a wrong one costs "
        f"one draft step; >= {min_count} rounds must clear it; {NEVER} = never streams. Costs: {costs.describe()}"
    )
