"""What an operator's tools ask edge-serve, without an API key: is it alive, is it ready, how is it doing.

- ``GET /health``: the process answers (always 200), with the cloud's reachability and the slots.
- ``GET /ready``: 200 only when a request would start now: the draft models loaded, the cloud
  verifier SERVING by its grpc.health.v1 (an answer at most one probe interval old,
  ``cloud_health.py``) and its limits known, a slot free; otherwise 503 in OpenAI's error shape
  naming what is missing, so a load balancer sends requests elsewhere.
- ``GET /metrics``: Prometheus' text format (``metrics.py``).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from edgespec.core.modes import Mode
from edgespec.openai_api.backend import EdgeBackend
from edgespec.openai_api.cloud import CloudRefused, CloudUnavailable
from edgespec.openai_api.cloud_health import CloudHealth, ReadyProbe
from edgespec.openai_api.errors import OpenAIError
from edgespec.openai_api.metrics import EdgeMetrics

logger = logging.getLogger(__name__)


def models_loaded(backend: EdgeBackend) -> bool:
    if backend.tokenizer is None:
        return False
    return not backend.settings.mode.uses_draft or all(slot.draft is not None for slot in backend.slots)


async def cloud_problem(backend: EdgeBackend, cloud: CloudHealth) -> str | None:
    """Why the cloud cannot serve a request now, or None."""
    if backend.settings.mode is Mode.EDGE_ONLY:
        return None
    problem = await cloud.problem()
    if problem is not None:
        return problem
    try:
        await backend.describe_cloud()  # probed once: the target and limits every request needs
    except (CloudUnavailable, CloudRefused) as error:
        return str(error)
    return None


def add_probe_routes(app: FastAPI, backend: EdgeBackend, metrics: EdgeMetrics, ready_probe: ReadyProbe) -> None:
    cloud = CloudHealth(backend.settings.address, backend.settings.options.security, ready_probe)

    @app.get("/health")
    async def health() -> JSONResponse:
        try:
            await backend.check_reachable()
            cloud = "reachable"
        except CloudUnavailable:
            cloud = "unreachable"
        return JSONResponse(
            {
                "status": "ok",
                "cloud": cloud,
                "model": backend.model_id,
                "mode": backend.settings.mode.value,
                "slots": len(backend.slots),
                "free_slots": backend.free_slots,
            }
        )

    @app.get("/ready")
    async def ready() -> JSONResponse:
        missing = []
        if not models_loaded(backend):
            missing.append("the draft models are not loaded")
        problem = await cloud_problem(backend, cloud)
        if problem is not None:
            missing.append(problem)
        if backend.free_slots == 0:
            missing.append(f"all {len(backend.slots)} slots are busy")
        if missing:
            logger.info("not ready: %s", "; ".join(missing))
            return OpenAIError(503, "not ready: " + "; ".join(missing), "server_error", None, "not_ready").response()
        return JSONResponse(
            {
                "status": "ready",
                "model": backend.model_id,
                "mode": backend.settings.mode.value,
                "slots": len(backend.slots),
                "free_slots": backend.free_slots,
            }
        )

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)
