"""The verifier every edge-serve test module runs against: a real `edgespec` gRPC verifier on tiny
models, one per module (module scope)."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.openai_api.test_openai_api import Verifier


@pytest.fixture(scope="module")
def verifier() -> Iterator[Verifier]:
    verifier = Verifier()
    yield verifier
    verifier.server.stop()
