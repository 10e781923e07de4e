"""Hardware profiles price a pass of decodes with their own batch curve."""

from __future__ import annotations

import pytest

from edgespec.sim.costs import HardwareProfile, h200_profile


def test_a_pass_of_decodes_uses_the_decode_curve_and_falls_back_to_the_verify_curve() -> None:
    profile = HardwareProfile(name="t", forward_ms={1: 10.0, 5: 12.0}, prefill_ms_per_token=1.0, batch_factor={1: 1.0, 4: 2.0}, decode_batch_factor={1: 1.0, 4: 1.2})
    assert profile.batch_s([0.010] * 4, decodes=True) == pytest.approx(0.012)
    assert profile.batch_s([0.012] * 4) == pytest.approx(0.024)
    without = HardwareProfile(name="t", forward_ms={1: 10.0}, prefill_ms_per_token=1.0, batch_factor={1: 1.0, 4: 2.0})
    assert without.batch_s([0.010] * 4, decodes=True) == pytest.approx(0.020)


def test_the_h200_profile_reads_its_measured_decode_batches() -> None:
    profile = h200_profile(None)
    assert profile.decode_batch_factor[1] == 1.0
    assert profile.decode_batch_factor[32] == pytest.approx(76.69695300000257 / 16.49708100000069)
    assert profile.batch_factor[32] == pytest.approx(82.09361699999818 / 19.922923000002868)
