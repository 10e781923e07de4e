"""The simulated link: one ordered stream each way, as gRPC over TCP."""

from __future__ import annotations

import pytest

from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.drivers.cost_profile import HardwareProfile
from edgespec.drivers.trace_backends import TraceCloud
from edgespec.drivers.virtual_clock import ClientSpec, VirtualClock, _Session
from edgespec.drivers.virtual_devices import Link

PROFILE = HardwareProfile(name="test", forward_ms={1: 10.0, 5: 12.0}, prefill_ms_per_token=0.5, draft_ms_per_token=3.0)


def test_the_link_keeps_each_directions_messages_in_order() -> None:
    world = VirtualClock(TraceCloud({}, PROFILE))
    link = Link(one_way_s=0.01, bandwidth_bytes_per_s=1000.0)
    session = _Session(world, 0, ClientSpec([1, 2, 3], Mode.SD, GenerationConfig(), None, link))
    arrived: list[tuple[str, float]] = []
    session._to_server(500, lambda: arrived.append(("large", world.events.now)))
    session._to_server(10, lambda: arrived.append(("small", world.events.now)))
    session._to_client(10, lambda: arrived.append(("down", world.events.now)))
    world.events.run()
    # The small message would take 20 ms alone; it cannot overtake the large one (510 ms), while
    # the other direction is a stream of its own.
    assert [name for name, _ in arrived] == ["down", "large", "small"]
    assert arrived[2][1] == pytest.approx(arrived[1][1])
