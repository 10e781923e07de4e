"""Hardware profiles price a pass of decodes with their own batch curve."""

from __future__ import annotations

import pytest

from edgespec.drivers.cost_profile import HardwareProfile, h200_profile


def test_a_pass_of_decodes_uses_the_decode_curve_and_falls_back_to_the_verify_curve() -> None:
    profile = HardwareProfile(
        name="t",
        forward_ms={1: 10.0, 5: 12.0},
        prefill_ms_per_token=1.0,
        batch_factor={1: 1.0, 4: 2.0},
        decode_batch_factor={1: 1.0, 4: 1.2},
    )
    assert profile.batch_s([0.010] * 4, decodes=True) == pytest.approx(0.012)
    assert profile.batch_s([0.012] * 4) == pytest.approx(0.024)
    without = HardwareProfile(name="t", forward_ms={1: 10.0}, prefill_ms_per_token=1.0, batch_factor={1: 1.0, 4: 2.0})
    assert without.batch_s([0.010] * 4, decodes=True) == pytest.approx(0.020)


def test_the_h200_profile_reads_its_measured_decode_batches_prefill_and_server_draft() -> None:
    profile = h200_profile(None)
    # docs/gpu/costs-qwen1.5b.json: greedy passes as the server runs them (argmax on the GPU).
    assert profile.decode_batch_factor[1] == 1.0
    assert profile.decode_batch_factor[32] == pytest.approx(82.50162399998828 / 17.287320999997746)
    assert profile.batch_factor[32] == pytest.approx(91.62890800000412 / 20.860636999998405)
    # A prefill costs at least a decode (launch-bound), and the measured prefill at its context.
    assert profile.prefill_s(1) * 1000 == pytest.approx(17.44390199999657, rel=1e-3)
    assert profile.prefill_s(384) * 1000 == pytest.approx(19.5886019999989)
    # cloud-sd's server draft: the 0.5B's measured step (docs/gpu/costs-qwen0.5b-draft.json).
    assert profile.server_draft_ms_per_token == pytest.approx(15.119858500014516)
    assert profile.server_draft_source.startswith("measured")


def test_without_a_measured_draft_the_server_draft_is_derived_from_the_layers(tmp_path) -> None:
    profile = h200_profile(None, draft_costs=tmp_path / "absent.json")
    assert profile.server_draft_ms_per_token == pytest.approx(17.44390199999657 * 24 / 28)
    assert profile.server_draft_source.startswith("derived")
