"""A Ray Serve replica's health check asks the verifier's own grpc.health.v1 servicer: it passes
while the verifier serves and raises (so Serve replaces the replica) once it does not: its pass
thread gone, or its shutdown begun. Run on a real `VerifierService` with the tiny target, the
replica class undecorated (Serve's controller is what calls `check_health` in a cluster)."""

from __future__ import annotations

import asyncio

import pytest

from edgespec.models.target import TargetRuntime
from edgespec.server.health import VerifierHealth
from edgespec.server.ray_deployment import VerifierReplica
from edgespec.server.servicer import VerifierService
from tests.support.tiny_models import tiny_model


def replica() -> object:
    """The replica class's instance around a real verifier, without Serve's replica context."""
    instance = object.__new__(VerifierReplica.func_or_class)
    instance.service = VerifierService(TargetRuntime(tiny_model("qwen2", seed=0)), None, frozenset({0}), "tiny")
    instance.health = VerifierHealth(instance.service)
    instance.replica_id = "test"
    return instance


def test_a_serving_verifier_passes_the_health_check() -> None:
    healthy = replica()
    asyncio.run(healthy.check_health())  # type: ignore[attr-defined]
    healthy.service.shutdown()  # type: ignore[attr-defined]


def test_a_verifier_whose_pass_thread_stopped_fails_it() -> None:
    broken = replica()
    broken.service.shutdown()  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="NOT_SERVING"):
        asyncio.run(broken.check_health())  # type: ignore[attr-defined]


def test_a_draining_verifier_fails_it() -> None:
    draining = replica()
    draining.service.draining = True  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="NOT_SERVING"):
        asyncio.run(draining.check_health())  # type: ignore[attr-defined]
    draining.service.shutdown()  # type: ignore[attr-defined]
