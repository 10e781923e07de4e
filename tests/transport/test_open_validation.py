"""An open's numbers refused as what they are: a NaN or infinite sampling value is "not a number"
or "not finite" (never "out of range"), and a budget of zero new tokens is "at least 1"."""

from __future__ import annotations

import math

import pytest

from edgespec.transport import edgespec_pb2 as pb
from edgespec.transport.codec import ProtocolError
from edgespec.transport.validation import check_open


def refusal(**fields: object) -> ProtocolError:
    values: dict[str, object] = dict(protocol_version=1, kind=pb.SPECULATIVE, prompt_ids=[1, 2], max_new_tokens=8)
    values.update(fields)
    with pytest.raises(ProtocolError) as refused:
        check_open(pb.Open(**values), max_new_tokens_limit=100)  # type: ignore[arg-type]
    return refused.value


@pytest.mark.parametrize("name", ["temperature", "top_p"])
def test_a_nan_sampling_value_is_refused_as_not_a_number(name: str) -> None:
    error = refusal(sampling=pb.Sampling(**{name: math.nan}))
    assert error.code == pb.BAD_REQUEST and str(error) == f"sampling.{name} is not a number (NaN)"


@pytest.mark.parametrize("value", [math.inf, -math.inf])
def test_an_infinite_temperature_is_refused_as_not_finite(value: float) -> None:
    error = refusal(sampling=pb.Sampling(temperature=value))
    assert error.code == pb.BAD_REQUEST and "must be a finite number" in str(error)


def test_zero_new_tokens_is_refused_as_at_least_one() -> None:
    error = refusal(max_new_tokens=0)
    assert error.code == pb.BAD_REQUEST and "max_new_tokens must be at least 1" in str(error) and "got 0" in str(error)
    # Even with committed tokens, whose count would otherwise be the complaint.
    assert "at least 1" in str(refusal(max_new_tokens=0, committed_ids=[3]))


def test_an_open_within_its_bounds_passes() -> None:
    check_open(pb.Open(protocol_version=1, kind=pb.SPECULATIVE, prompt_ids=[1], max_new_tokens=8), 100)
    check_open(pb.Open(max_new_tokens=8, sampling=pb.Sampling(temperature=0.7, top_p=0.9)), 100)
