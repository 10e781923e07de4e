"""Hardware profiles assembled from two halves: the verifier's costs as a target engine measured
them (`edgespec profile engine --out FILE`), and an edge device's draft costs (this host's draft,
probed, or a device described in a JSON file, such as the Jetson-class edge shipped in
``docs/window``).

Keeping the halves apart is what lets one map place a CPU verifier, a GPU verifier and an assumed
edge device side by side: the engine file changes when an engine gets faster, the edge file when
the device does, and neither has to be re-entered by hand.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgespec.drivers.cost_profile import HardwareProfile

WINDOW_DATA = Path(__file__).resolve().parents[3] / "docs" / "window"
# Named edge devices: a JSON of `EdgeCosts` fields each, with where its numbers come from.
NAMED_EDGES = {"jetson-orin": WINDOW_DATA / "edge-jetson-orin-nano.json"}


@dataclass(frozen=True)
class EdgeCosts:
    """What the edge device costs: its draft per token and per prompt token, and the protocol's
    handling per message on that device."""

    name: str
    draft_ms_per_token: float
    draft_prefill_ms_per_token: float
    message_overhead_ms: float
    source: str = ""

    @staticmethod
    def of(profile: HardwareProfile) -> "EdgeCosts":
        """The edge half of a whole hardware profile (a probed `host`, say)."""
        return EdgeCosts(
            profile.name,
            profile.draft_ms_per_token,
            profile.draft_prefill_ms_per_token,
            profile.message_overhead_ms,
            f"the edge of {profile.name}: {profile.source}",
        )

    @staticmethod
    def load(path: str | Path) -> "EdgeCosts":
        data = json.loads(Path(path).read_text())
        fields = {k: data[k] for k in EdgeCosts.__dataclass_fields__ if k in data}
        try:
            return EdgeCosts(**fields)
        except TypeError as error:
            raise ValueError(f"{path} is not an edge profile ({error})") from None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")


def is_engine_costs(data: dict[str, Any]) -> bool:
    """Whether a JSON object is `edgespec profile engine` output (not a `HardwareProfile`)."""
    return "fastest_ms" in data and "engine" in data


def with_edge(profile: HardwareProfile, edge: EdgeCosts) -> HardwareProfile:
    """``profile``'s verifier with ``edge``'s draft and protocol costs."""
    copy = HardwareProfile(**asdict(profile))
    copy.draft_ms_per_token = edge.draft_ms_per_token
    copy.draft_prefill_ms_per_token = edge.draft_prefill_ms_per_token
    copy.message_overhead_ms = edge.message_overhead_ms
    copy.name = f"{profile.name} + {edge.name}"
    copy.source = f"{profile.source}; edge: {edge.source or edge.name}"
    return copy


def profile_from_engine_costs(costs: dict[str, Any], edge: EdgeCosts, name: str | None = None) -> HardwareProfile:
    """A hardware profile whose verifier is an engine's measured passes: a decode (1 row), a
    verify of ``block`` rows, and several sessions' verifies and decodes in one pass against
    one session's. The fastest of the repeats is used: on a shared machine it is the closer
    estimate of the pass alone (the file keeps the medians beside it)."""
    fastest = costs["fastest_ms"]
    block = int(costs["config"]["block"])
    sessions = [int(s) for s in costs["config"]["sessions"]]
    verify_one = fastest.get("verify_x1", fastest["verify"])
    decode_one = fastest.get("decode_x1", fastest["decode"])
    batch = {1: 1.0, **{s: fastest[f"verify_x{s}"] / verify_one for s in sessions if f"verify_x{s}" in fastest}}
    decode_batch = {s: fastest[f"decode_x{s}"] / decode_one for s in sessions if f"decode_x{s}" in fastest}
    prefill = costs.get("prefill")
    # Without a timed prefill, a prompt is priced as verifies of `block` rows: an engine that
    # reads its weights once per pass pays about that per chunk.
    per_token = prefill["ms"] / prefill["tokens"] if prefill else fastest["verify"] / block
    engine = costs["engine"]
    host = costs.get("host", {})
    return with_edge(
        HardwareProfile(
            name=name or f"{engine} ({costs.get('target', '?')})",
            forward_ms={1: fastest["decode"], block: fastest["verify"]},
            prefill_ms_per_token=per_token,
            exit_ms=0.0,
            exit_candidates_ms=0.0,
            batch_factor=batch,
            decode_batch_factor={1: 1.0, **decode_batch} if decode_batch else {},
            source=(
                f"`edgespec profile engine --engine {engine}`: {costs.get('target', '?')}, "
                f"{costs.get('threads', '?')} thread(s) on {host.get('cpu', 'an unnamed host')}"
            ),
            host=host,
        ),
        edge,
    )


def load_verifier(path: str | Path, edge: EdgeCosts) -> HardwareProfile:
    """A verifier from a file: `profile engine` output or a whole `HardwareProfile` JSON (whose
    edge half ``edge`` then replaces)."""
    data = json.loads(Path(path).read_text())
    if is_engine_costs(data):
        return profile_from_engine_costs(data, edge)
    return with_edge(HardwareProfile.load(path), edge)
