"""Hardware cost profiles: what each step of a generation costs on a given verifier and edge
device. ``host`` is probed on this machine (``sim/probe.py``), ``h200`` comes from the costs
measured on an H200 (``docs/gpu``), and a user's JSON file describes any other pair."""

from __future__ import annotations

import bisect
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

GPU_COSTS = Path(__file__).resolve().parents[3] / "docs" / "gpu" / "costs-qwen1.5b.json"
# The 0.5B draft's own forwards on the same kind of GPU (cloud-sd's server-side draft).
GPU_DRAFT_COSTS = GPU_COSTS.with_name("costs-qwen0.5b-draft.json")
# Decoder layers of the default pair: Qwen2.5-Coder-0.5B drafts, -1.5B verifies.
DRAFT_LAYERS, TARGET_LAYERS = 24, 28


def _interpolate(table: dict[int, float], x: float) -> float:
    keys = sorted(table)
    if x <= keys[0]:
        return table[keys[0]]
    if x >= keys[-1]:
        if len(keys) == 1:
            return table[keys[-1]]
        a, b = keys[-2], keys[-1]  # extend the last segment's slope
        return max(table[b], table[b] + (table[b] - table[a]) * (x - b) / (b - a))
    i = bisect.bisect_left(keys, x)
    a, b = keys[i - 1], keys[i]
    return table[a] + (table[b] - table[a]) * (x - a) / (b - a)


@dataclass
class HardwareProfile:
    name: str
    # The verifier: one forward over ``rows`` new positions of one session (rows = γ + 1 for a
    # verify, 1 for a decode), in ms.
    forward_ms: dict[int, float]
    prefill_ms_per_token: float
    prefill_fixed_ms: float = 0.0
    exit_ms: float = 0.0  # added to a forward per exit read out (whole vocabulary)
    # The same for a candidate-id exit (adapter + norm + 8 LM-head rows per position): a small
    # fraction of a whole-vocabulary exit; profiles probed before it existed default to a CPU's.
    exit_candidates_ms: float = 0.15
    num_layers: int = 28
    # A batched forward of b sessions costs the longest one's time times this factor.
    batch_factor: dict[int, float] = field(default_factory=lambda: {1: 1.0})
    # The same for a pass of b one-row decodes (cloud-ar), measured apart: on a memory-bound
    # processor b decode rows cost far less than b verify blocks. Empty: batch_factor.
    decode_batch_factor: dict[int, float] = field(default_factory=dict)
    # The edge device.
    draft_ms_per_token: float = 20.0
    draft_prefill_ms_per_token: float = 1.0
    # Protocol handling per message on each side (serialisation, gRPC, event loops).
    message_overhead_ms: float = 0.5
    # cloud-sd: the draft run on the verifier's processor (None: not known for this profile).
    server_draft_ms_per_token: float | None = None
    server_draft_prefill_ms_per_token: float | None = None
    server_draft_source: str = ""
    source: str = ""
    host: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.forward_ms = {int(k): float(v) for k, v in self.forward_ms.items()}
        self.batch_factor = {int(k): float(v) for k, v in self.batch_factor.items()}
        self.decode_batch_factor = {int(k): float(v) for k, v in self.decode_batch_factor.items()}

    def forward_s(self, rows: int, exits: int = 0, candidates: bool = False) -> float:
        return (
            _interpolate(self.forward_ms, rows) + exits * (self.exit_candidates_ms if candidates else self.exit_ms)
        ) / 1000

    def batch_s(self, single_s: list[float], decodes: bool = False) -> float:
        """A pass of these sessions' forwards; ``decodes``: every one is a one-row decode."""
        factor = self.decode_batch_factor if decodes and self.decode_batch_factor else self.batch_factor
        return max(single_s) * _interpolate(factor, len(single_s))

    def prefill_s(self, tokens: int) -> float:
        return (self.prefill_fixed_ms + self.prefill_ms_per_token * tokens) / 1000

    def draft_s(self, tokens: int, fed: int) -> float:
        """Drafting ``tokens`` after feeding ``fed`` new committed tokens (the prompt, first)."""
        extra = max(0, fed - 1) * self.draft_prefill_ms_per_token
        return (tokens * self.draft_ms_per_token + extra) / 1000

    def server_drafter(self) -> "HardwareProfile":
        """This profile with the server's draft costs as its draft costs (cloud-sd's draft
        replays through the same trace drafter as the edge's)."""
        if self.server_draft_ms_per_token is None:
            raise ValueError(
                f"the {self.name} profile has no server-side draft cost, which cloud-sd needs: "
                "re-probe (`--refresh-probe`) or set server_draft_ms_per_token in the profile's JSON"
            )
        copy = HardwareProfile(**asdict(self))
        copy.draft_ms_per_token = self.server_draft_ms_per_token
        copy.draft_prefill_ms_per_token = self.server_draft_prefill_ms_per_token or 0.0
        return copy

    def scaled(self, decode_ms: float) -> "HardwareProfile":
        """The same verifier made faster or slower so that a decode costs ``decode_ms``."""
        factor = decode_ms / self.forward_ms[min(self.forward_ms)]
        copy = HardwareProfile(**asdict(self))
        copy.forward_ms = {k: v * factor for k, v in self.forward_ms.items()}
        copy.prefill_ms_per_token *= factor
        copy.prefill_fixed_ms *= factor
        copy.exit_ms *= factor
        if copy.server_draft_ms_per_token is not None:  # the server's draft runs on the same processor
            copy.server_draft_ms_per_token *= factor
            copy.server_draft_prefill_ms_per_token = (copy.server_draft_prefill_ms_per_token or 0.0) * factor
        copy.name = f"{self.name} x{factor:.2f}"
        return copy

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @staticmethod
    def load(path: str | Path) -> "HardwareProfile":
        try:
            return HardwareProfile(**json.loads(Path(path).read_text()))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path} is not a hardware profile ({error}); see `edgespec simulate --help`") from None


def h200_profile(
    edge: HardwareProfile | None, costs: Path = GPU_COSTS, draft_costs: Path = GPU_DRAFT_COSTS
) -> HardwareProfile:
    """The H200's measured costs (random weights in the real shapes); the edge side from this
    host's probe when given (the draft runs on the device, not the GPU)."""
    data = json.loads(costs.read_text())
    forward = {1: data["decode_ms"], **{int(g) + 1: v["ms"] for g, v in data["verify"].items()}}
    exit_ms = (
        sum(v["with_exits_ms"] - v["ms"] for v in data["verify"].values())
        / len(data["verify"])
        / max(1, len(data["exit_layers"]))
    )
    single = data["batched"]["1"]["verify_gamma4_ms"]
    batch = {int(b): v["verify_gamma4_ms"] / single for b, v in data["batched"].items()}
    single_decode = data["batched"]["1"]["decode_ms"]
    decode_batch = {int(b): v["decode_ms"] / single_decode for b, v in data["batched"].items()}
    context = data.get("context", 384)
    profile = HardwareProfile(
        name="h200",
        forward_ms=forward,
        # A launch-bound GPU forward costs about the same for 1 token or a few hundred: a prefill
        # is priced from two measurements, a decode (1 token) and the prefill of `context` tokens,
        # not pro rata (which made a 100-token prompt 4x cheaper than the decode it contains).
        prefill_fixed_ms=min(data["decode_ms"], data["prefill_ms"]),
        prefill_ms_per_token=max(0.0, data["prefill_ms"] - data["decode_ms"]) / context,
        exit_ms=max(0.0, exit_ms),
        batch_factor=batch,
        decode_batch_factor=decode_batch,
        source=f"{costs.name}: {data['device']}, {data['dtype']}, random weights in the real shapes",
    )
    if draft_costs.is_file():
        drafted = json.loads(draft_costs.read_text())
        profile.server_draft_ms_per_token = drafted["decode_ms"]
        # Its prefill rides in the per-token rate alone (the profile has no fixed term for it):
        # the whole measured prefill spread over its context, as before.
        profile.server_draft_prefill_ms_per_token = drafted["prefill_ms"] / drafted.get("context", context)
        profile.server_draft_source = (
            f"measured: {draft_costs.name}, {drafted['device']}, {drafted['dtype']}, random weights in the real shapes"
        )
    else:
        # In this eager transformers runtime a batch-1 forward is launch-bound: cost follows the
        # number of layers, not the weights, so the draft's step scales with its layer count.
        profile.server_draft_ms_per_token = data["decode_ms"] * DRAFT_LAYERS / TARGET_LAYERS
        profile.server_draft_prefill_ms_per_token = data["prefill_ms"] / context * DRAFT_LAYERS / TARGET_LAYERS
        profile.server_draft_source = (
            f"derived: the measured decode x {DRAFT_LAYERS}/{TARGET_LAYERS} layers (launch-bound eager runtime)"
        )
    if edge is not None:
        profile.draft_ms_per_token = edge.draft_ms_per_token
        profile.draft_prefill_ms_per_token = edge.draft_prefill_ms_per_token
        profile.message_overhead_ms = edge.message_overhead_ms
        profile.source += f"; edge costs from {edge.name}"
    return profile
