"""Where per-request speculation pays: the window of target decode times, round trips and edge
devices in which a speculative mode beats the fastest `cloud-ar`, and the client counts at which
a shared verifier gains capacity.

Every figure here is a ratio of two simulated runs of the same traces: a speculative mode on the
verifier's costs against `cloud-ar` on the baseline's. Sweeping the target's decode time scales
the verifier's whole cost curve (`HardwareProfile.scaled`), so the shape an engine measured (a
verify of 5 tokens at 1.2 decodes on a GPU, about 4 on llama.cpp here) is kept at every point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from edgespec.core.modes import Mode
from edgespec.drivers.cost_profile import HardwareProfile
from edgespec.drivers.trace import Trace
from edgespec.drivers.virtual_devices import Link
from edgespec.link import PROFILES
from edgespec.sim.simulate import SimConfig, clients_sweep, link_for, run_mode, speedup_grid


@dataclass(frozen=True)
class DecodeSearch:
    """Where to look for the smallest winning decode time: between ``low_ms`` and ``high_ms``,
    doubling until a win brackets the crossing, then bisecting (in log space) to ``precision``."""

    low_ms: float = 2.0
    high_ms: float = 2048.0
    precision: float = 0.02  # the answer's relative uncertainty


def tokens_per_s(traces: Sequence[Trace], mode: str, profile: HardwareProfile, link: Link, config: SimConfig) -> float:
    """One mode's rate over all traces (every token over every generation's time)."""
    records = run_mode(traces, Mode.parse(mode), profile, link, config)
    return sum(len(r["tokens"]) for r in records) / sum(r["stats"]["total_s"] for r in records)


def smallest_winning_decode(speedup: Callable[[float], float], search: DecodeSearch = DecodeSearch()) -> dict[str, Any]:
    """The smallest decode time (ms/token) at which ``speedup`` exceeds 1, assuming that once a
    mode wins it keeps winning as the target gets slower (the first crossing on the doubling grid
    is the one reported). ``kind``: ``crossing`` (found), ``always`` (wins already at ``low_ms``)
    or ``never`` (not up to ``high_ms``)."""
    searched = [search.low_ms, search.high_ms]
    below, x = None, search.low_ms
    while x <= search.high_ms * (1 + 1e-9):
        if speedup(x) > 1.0:
            break
        below, x = x, x * 2
    else:
        return {"decode_ms": None, "kind": "never", "searched_ms": searched}
    if below is None:
        return {"decode_ms": search.low_ms, "kind": "always", "searched_ms": searched}
    above = x
    while above / below > 1 + search.precision:
        middle = math.sqrt(above * below)
        below, above = (below, middle) if speedup(middle) > 1.0 else (middle, above)
    return {"decode_ms": round(above, 2), "kind": "crossing", "searched_ms": searched}


def thresholds(
    traces: Sequence[Trace],
    profile: HardwareProfile,
    modes: Sequence[str],
    link_names: Sequence[str],
    config: SimConfig,
    search: DecodeSearch = DecodeSearch(),
) -> dict[str, dict[str, Any]]:
    """link -> mode -> the smallest target decode time at which the mode beats `cloud-ar` (both
    on ``profile``'s cost shape scaled to that decode time: the verifier is the fastest engine)."""
    result: dict[str, dict[str, Any]] = {}
    for name in link_names:
        baseline: dict[float, float] = {}

        def ratio(mode: str, decode_ms: float) -> float:
            scaled = profile.scaled(decode_ms)
            link = link_for(PROFILES[name], scaled)
            if decode_ms not in baseline:
                baseline[decode_ms] = tokens_per_s(traces, "cloud-ar", scaled, link, config)
            return tokens_per_s(traces, mode, scaled, link, config) / baseline[decode_ms]

        result[name] = {
            mode: smallest_winning_decode(lambda x, m=mode: ratio(m, x), search) for mode in modes if mode != "cloud-ar"
        }
    return result


def best_mode_grid(
    traces: Sequence[Trace],
    profile: HardwareProfile,
    modes: Sequence[str],
    rtts_ms: Sequence[float],
    decode_ms: Sequence[float],
    config: SimConfig,
) -> dict[str, Any]:
    """Over (decode time) x (round trip): the best speculative mode's speed-up over `cloud-ar`
    and which mode it is; every mode's own grid beside them."""
    grid = speedup_grid(traces, profile, modes, rtts_ms, decode_ms, config)
    best: list[list[float]] = []
    which: list[list[str]] = []
    for i in range(len(decode_ms)):
        row = [max(grid, key=lambda m: grid[m][i][j]) for j in range(len(rtts_ms))]
        which.append(row)
        best.append([grid[mode][i][j] for j, mode in enumerate(row)])
    return {"decode_ms": list(decode_ms), "rtt_ms": list(rtts_ms), "best": best, "best_mode": which, "modes": grid}


def marker_speedup(
    traces: Sequence[Trace],
    verifier: HardwareProfile,
    baseline: HardwareProfile,
    modes: Sequence[str],
    link: Link,
    config: SimConfig,
) -> dict[str, Any]:
    """A measured setting's own point: each mode on ``verifier``'s costs against `cloud-ar` on
    ``baseline``'s (the fastest engine that setting's hardware runs), and the best of them."""
    reference = tokens_per_s(traces, "cloud-ar", baseline, link, config)
    per_mode = {
        m: tokens_per_s(traces, m, verifier, link, config) / reference
        for m in modes
        if Mode.parse(m) is not Mode.CLOUD_AR
    }
    best = max(per_mode, key=lambda m: per_mode[m])
    return {"per_mode": per_mode, "best_mode": best, "best": per_mode[best]}


def capacity_crossing(
    traces: Sequence[Trace],
    profile: HardwareProfile,
    link_name: str,
    counts: Sequence[int],
    config: SimConfig,
    mode: str = "sd",
) -> dict[str, Any]:
    """Aggregate tokens/s of ``mode`` against `cloud-ar` as clients share one verifier, and the
    fewest clients at which ``mode`` is ahead (None: not at any count simulated)."""
    link = link_for(PROFILES[link_name], profile)
    sweep = clients_sweep(traces, profile, link, link_name, ["cloud-ar", mode], counts, config)
    points = {}
    for count, per_mode in sweep.items():
        ours, theirs = per_mode[mode]["aggregate_tokens_per_s"], per_mode["cloud-ar"]["aggregate_tokens_per_s"]
        points[str(count)] = {
            "cloud-ar_aggregate_tokens_per_s": theirs,
            f"{mode}_aggregate_tokens_per_s": ours,
            "ratio": ours / theirs if theirs else 0.0,
        }
    ahead = [int(c) for c, p in points.items() if p["ratio"] > 1.0]
    return {"mode": mode, "link": link_name, "points": points, "fewest_clients_ahead": min(ahead) if ahead else None}
