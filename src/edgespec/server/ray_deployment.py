"""The verifier as a Ray Serve deployment: each replica loads the target once and serves the
`Verifier.Session` bidirectional stream through Ray Serve's gRPC proxy.

A session is one stream, and Ray Serve pins a stream to one replica for its life, so the
replica holds the session's KV cache like a lone `edgespec serve` does. The proxy runs none of
our gRPC interceptors, so the token check happens here, on the metadata the proxy forwards.

`build_app` is the entry point a Serve config names (``import_path``); `edgespec serve
--replicas` calls it for a local cluster (see `replicas.py`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, AsyncIterator

from grpc_health.v1 import health_pb2
from ray import serve
from ray.exceptions import TaskCancelledError
from ray.serve.grpc_util import RayServegRPCContext

from edgespec.server.auth import FIRST_MESSAGE_WAIT_S, expected_header, refusal_for
from edgespec.server.health import VERIFIER_SERVICE, VerifierHealth
from edgespec.server.replica_spec import DEPLOYMENT_NAME, SESSION_LOG, ReplicaSpec
from edgespec.transport import edgespec_pb2 as pb

if TYPE_CHECKING:
    from edgespec.server.servicer import VerifierService

logger = logging.getLogger(__name__)


def load_service(spec: ReplicaSpec) -> VerifierService:
    """A VerifierService on the spec's target, as `edgespec serve` builds it."""
    import torch

    from edgespec.models.exit_choice import resolve_exits
    from edgespec.models.loading import load_model
    from edgespec.models.target import TargetRuntime
    from edgespec.prompting import eos_token_ids
    from edgespec.server.limits import AdmissionLimits, SessionLimits
    from edgespec.server.servicer import VerifierService

    torch.set_num_threads(max(1, spec.threads))
    target = load_model(spec.target, spec.dtype)
    if spec.device != "cpu":
        target.model.to(spec.device)
    exits = resolve_exits(spec.exits, target.model, spec.target)
    limits = SessionLimits(
        spec.max_prompt_tokens, spec.max_new_tokens, spec.max_block, spec.idle_timeout_s, spec.max_lifetime_s
    )
    admission = AdmissionLimits(
        spec.max_sessions, spec.max_queued, spec.max_batch, spec.max_batch_rows, spec.prefill_chunk
    )
    name = f"{target.name} ({target.dtype})"
    return VerifierService(
        TargetRuntime(target.model, exits),
        target.tokenizer,
        eos_token_ids(target.model, target.tokenizer),
        name,
        limits,
        admission,
        prefix_cache_tokens=spec.prefix_cache_tokens,
        exit_candidates=spec.exit_vocab == "candidates",
    )


@serve.deployment(name=DEPLOYMENT_NAME)
class VerifierReplica:
    def __init__(self, spec: dict[str, Any]) -> None:
        # A replica is a process of its own: its log lines go to stderr, which Ray forwards to
        # the driver (the `edgespec serve --replicas` console) and to the replica's log file.
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.spec = ReplicaSpec.from_args(spec)
        token = self.spec.token()
        self._expected = expected_header(token) if token else None
        self.service = load_service(self.spec)
        # The grpc.health.v1 servicer `edgespec serve` registers, asked in-process: Ray's proxy
        # forwards only the Verifier service, so Serve's own health check is where it is heard.
        self.health = VerifierHealth(self.service)
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.served = 0
        logger.info(
            "replica %s (pid %d): %s ready (%s)",
            self.replica_id,
            os.getpid(),
            self.service.target_name,
            "auth token" if token else "no auth",
        )

    async def Session(  # noqa: N802 (the gRPC method's name)
        self, request_stream: AsyncIterator[pb.ClientMessage], grpc_context: RayServegRPCContext
    ) -> AsyncIterator[pb.ServerMessage]:
        if self._expected is not None:
            refusal = refusal_for(grpc_context.invocation_metadata(), self._expected)
            if refusal is not None:
                logger.info("replica %s (pid %d): refused a session: %s", self.replica_id, os.getpid(), refusal)
                # Read the caller's first message before answering, as server/auth.py does: a reply
                # racing the client's first write can lose it its status (grpc/grpc#36066).
                try:
                    await asyncio.wait_for(anext(request_stream), FIRST_MESSAGE_WAIT_S)
                except (asyncio.TimeoutError, StopAsyncIteration, TaskCancelledError):
                    pass
                # The protocol's own UNAUTHENTICATED error rather than a gRPC status: Serve sends a
                # status only for a raised exception, and logs ~30 traceback lines per refusal in
                # the proxy and the replica each, a log flood any unauthenticated caller could cause.
                yield pb.ServerMessage(error=pb.Error(code=pb.UNAUTHENTICATED, message=refusal))
                return
        session_id = "-"
        try:
            # aclosing: a client gone mid-stream must end the servicer's session now, not at GC.
            async with aclosing(self.service.Session(_until_cancelled(request_stream), grpc_context)) as replies:
                async for reply in replies:
                    if reply.WhichOneof("kind") == "opened":
                        session_id = reply.opened.session_id
                        self.served += 1
                        self._log("opened", session_id)
                    yield reply
        finally:
            if session_id != "-":
                self._log("ended", session_id)

    async def check_health(self) -> None:
        """Serve's health check (every ``health_check_period_s``): the verifier's grpc.health.v1 answer
        for the Verifier service. Anything but SERVING (no model, a dead pass thread) raises, and
        Serve stops routing to this replica, kills it and starts a replacement."""
        reply = await self.health.Check(health_pb2.HealthCheckRequest(service=VERIFIER_SERVICE), None)
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            raise RuntimeError(f"replica {self.replica_id} (pid {os.getpid()}): the verifier reports {status}")

    def _log(self, event: str, session_id: str) -> None:
        logger.info(
            SESSION_LOG, self.replica_id, os.getpid(), event, session_id, len(self.service.sessions), self.served
        )

    def __del__(self) -> None:
        service = getattr(self, "service", None)
        if service is not None:
            service.shutdown()


async def _until_cancelled(requests: AsyncIterator[pb.ClientMessage]) -> AsyncIterator[pb.ClientMessage]:
    """The client's messages; a call the client cancelled (a cloud-ar client does once it has its
    tokens) ends them like a half-close, instead of surfacing as Ray's TaskCancelledError."""
    try:
        async for message in requests:
            yield message
    except TaskCancelledError:
        return


def build_app(args: dict[str, Any]) -> serve.Application:
    """The Serve application for a config's ``import_path``; ``args`` are `ReplicaSpec` fields."""
    spec = ReplicaSpec.from_args(dict(args))
    return VerifierReplica.bind(spec.as_args(with_token=True))
