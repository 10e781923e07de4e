"""The gRPC service: one bidirectional stream per generation session. A handler admits the
session (``admission.py``), opens it and prefills its prompt on the pass thread, then hands it to
its mode's loop: ``speculative_loop.py`` (blocks in, verdicts out), ``cloud_ar_loop.py`` (the
server decodes) or ``cloud_sd_loop.py`` (the server drafts and verifies). Messages are built in
``encoding.py``; the handlers here only route."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import AsyncIterator

import grpc

from edgespec.models.kv import kv_bytes_per_token
from edgespec.models.target import TargetRuntime
from edgespec.server.admission import SessionClock, check_admission, requested_prompt
from edgespec.server.cloud_ar_loop import decode_and_stream
from edgespec.server.cloud_draft import CloudDraft
from edgespec.server.cloud_sd_loop import CloudSdSettings, draft_verify_and_stream
from edgespec.server.encoding import END_OF_STREAM, error_code_name, error_reply, internal_error_reply, opened_reply
from edgespec.server.limits import AdmissionLimits, SessionLimits
from edgespec.server.metrics import NoMetrics, VerifierMetrics
from edgespec.server.pass_thread import BatchScheduler
from edgespec.server.prefix_cache import TenantPrefixCaches
from edgespec.server.refusals import Refused
from edgespec.server.session import ServerSession
from edgespec.server.speculative_loop import SpeculativeLoop
from edgespec.server.structured import open_grammar
from edgespec.transport import edgespec_pb2 as pb
from edgespec.transport import edgespec_pb2_grpc as pb_grpc
from edgespec.transport.codec import ProtocolError, grammar_from_wire, logprobs_request, sampling_from_wire
from edgespec.transport.security import AUTH_METADATA_KEY
from edgespec.transport.validation import decoded

logger = logging.getLogger(__name__)


@dataclass
class _StreamState:
    """What one stream's handler knows of its session, for the metrics of how it ended."""

    kind: int = 0  # the session kind its open asked for; 0: no open seen
    session: ServerSession | None = None  # set once the session opened (its prompt prefilled)


class VerifierService(pb_grpc.VerifierServicer):
    def __init__(
        self,
        runtime: TargetRuntime,
        tokenizer: object,
        eos_ids: frozenset[int],
        target_name: str = "",
        limits: SessionLimits = SessionLimits(),
        admission: AdmissionLimits = AdmissionLimits(),
        cloud_draft: CloudDraft | None = None,
        prefix_cache_tokens: int = 0,
        exit_candidates: bool = True,
        metrics: VerifierMetrics | None = None,
    ) -> None:
        """``metrics``: where the service reports what it serves (None: nowhere)."""
        if cloud_draft is not None:
            cloud_draft.check_pairs_with(runtime.vocab_size)
        self.runtime = runtime
        self.cloud_draft = cloud_draft  # cloud-sd's draft, on the server's processor
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.target_name = target_name
        self.limits = limits
        self.admission = admission
        # Exits score only the draft's candidate ids when a block carries them (False: the whole
        # vocabulary, what clients without candidates get anyway).
        self.exit_candidates = exit_candidates
        # One model, one (batched) forward at a time, off the event loop, so replies keep
        # streaming while the model runs.
        self.metrics = metrics if metrics is not None else NoMetrics()
        self.scheduler = BatchScheduler(runtime, admission, metrics=self.metrics)
        self.sessions: dict[str, ServerSession] = {}
        # Set when the server begins its shutdown: open sessions finish, new ones are refused.
        self.draining = False
        # Prompt prefixes' KV kept across sessions, per tenant (server/prefix_cache.py); 0: off.
        self.prefix_caches = (
            TenantPrefixCaches.for_runtime(runtime, prefix_cache_tokens) if prefix_cache_tokens > 0 else None
        )
        self.metrics.watch(
            admission.max_sessions, lambda: len(self.sessions), lambda: self.scheduler.queued, self.kv_bytes
        )

    def kv_bytes(self) -> int:
        """KV cache bytes the open sessions' committed tokens hold (read from any thread)."""
        tokens = sum(len(session.kv) for session in list(self.sessions.values()))
        per_token = getattr(self.runtime, "kv_bytes_per_token", None)  # an engine's own (llama.cpp)
        return tokens * (per_token if per_token is not None else kv_bytes_per_token(self.runtime.model))

    async def Session(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.ClientMessage], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ServerMessage]:
        replies: asyncio.Queue[object] = asyncio.Queue()
        tenant = ""
        if self.prefix_caches:
            tenant = TenantPrefixCaches.identity(dict(context.invocation_metadata() or ()).get(AUTH_METADATA_KEY))
        worker = asyncio.create_task(self._serve_session(request_iterator, replies, tenant))
        try:
            while True:
                reply = await replies.get()
                if reply is END_OF_STREAM:
                    break
                yield reply  # type: ignore[misc]
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)

    async def _serve_session(
        self, requests: AsyncIterator[pb.ClientMessage], replies: asyncio.Queue[object], tenant: str = ""
    ) -> None:
        """Route one stream's messages until it closes, fails or expires; then free its session."""
        session: ServerSession | None = None
        speculative: SpeculativeLoop | None = None  # set with the session
        messages = decoded(requests)
        clock = SessionClock(self.limits)
        state = _StreamState()
        outcome = "closed"  # unless it finished, or failed below
        try:
            while True:
                try:
                    message = await asyncio.wait_for(messages.__anext__(), clock.read_timeout())
                except StopAsyncIteration:
                    # A client may half-close right after its last block: answer what it sent.
                    if speculative is not None:
                        await speculative.finish_in_flight()
                    break
                except asyncio.TimeoutError:
                    raise clock.expired() from None
                kind = message.WhichOneof("kind")
                if kind == "open":
                    if session is not None:
                        raise ProtocolError(pb.BAD_REQUEST, "the session is already open")
                    state.kind = message.open.kind
                    session = await self._open(message.open, replies, clock, tenant, state)
                    speculative = SpeculativeLoop(
                        session,
                        self.scheduler,
                        self.runtime,
                        replies,
                        self.limits.max_block,
                        self.exit_candidates,
                        self.metrics,
                    )
                elif kind == "block":
                    if speculative is None:
                        raise ProtocolError(pb.BAD_REQUEST, "send open before any block")
                    speculative.receive(message.block)
                elif kind == "close":
                    if session is None:
                        raise ProtocolError(pb.BAD_REQUEST, "close before open: there is no session to close")
                    break
                else:
                    raise ProtocolError(pb.BAD_REQUEST, "empty message")
        except (ProtocolError, Refused) as error:
            logger.info("session %s: %s", session.id if session else "-", error)
            code = error_code_name(error)
            self.metrics.refused(code)
            outcome = "refused" if state.session is None else "expired" if code == "EXPIRED" else "error"
            replies.put_nowait(error_reply(error))
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception as error:  # a bug must end this session, never the server
            logger.exception("session %s failed", session.id if session else "-")
            outcome = "failed"
            replies.put_nowait(internal_error_reply(error))
        finally:
            if state.kind:
                self.metrics.session_ended(state.kind, session_outcome(outcome, state, speculative))
            if session is not None:
                self.sessions.pop(session.id, None)
                session.keep_prefix()  # a finished generation's cache, for the tenant's next prompt
                session.rounds.session_closed()  # held pipelined blocks go without compute
            if speculative is not None:
                await speculative.cancel()
            replies.put_nowait(END_OF_STREAM)

    async def _open(
        self,
        request: pb.Open,
        replies: asyncio.Queue[object],
        clock: SessionClock,
        tenant: str = "",
        state: _StreamState | None = None,
    ) -> ServerSession:
        """Admit and open a session, prefill its prompt, answer ``opened``; in a mode where the
        server generates (cloud-ar, cloud-sd), generate it all before returning."""
        check_admission(
            request, len(self.sessions), self.admission, self.limits, self.cloud_draft is not None, self.draining
        )
        sampling = sampling_from_wire(request.sampling)
        prompt_ids = requested_prompt(request, self.tokenizer)
        grammar = open_grammar(
            grammar_from_wire(request),
            self.tokenizer,
            self.runtime.vocab_size,
            sorted(self.eos_ids),
            request.committed_ids,
        )
        session = ServerSession(
            self.runtime,
            prompt_ids,
            list(request.committed_ids),
            sampling,
            int(request.seed),
            int(request.max_new_tokens),
            self.eos_ids,
            self.limits,
            self.prefix_caches.for_tenant(tenant) if self.prefix_caches else None,
            top_logprobs=logprobs_request(request),
            grammar=grammar,
            early_verdicts=request.kind == pb.SPECULATIVE and bool(request.early_verdicts),
        )
        self.sessions[session.id] = session
        if request.committed_ids:
            self.metrics.resumed(len(request.committed_ids))
        try:
            prefill = session.prefill_job()
            prefill_ms = (await self.scheduler.submit(prefill)).forward_ms if prefill is not None else 0.0
            exit_layers = list(self.runtime.exits.layers) if self.runtime.exits else []
            replies.put_nowait(
                opened_reply(
                    session.id,
                    prompt_ids,
                    self.eos_ids,
                    exit_layers,
                    self.runtime.num_layers,
                    prefill_ms,
                    self.target_name,
                    grammar=grammar is not None,
                )
            )
            logger.info(
                "session %s opened: %d prompt tokens (%d cached), kind %s",
                session.id,
                len(prompt_ids),
                session.reused_prefix,
                pb.SessionKind.Name(request.kind),
            )
            if state is not None:
                state.session = session
            await self._generate_on_server(session, request, replies, clock)
        except BaseException:
            # Until _open returns, the caller does not hold the session to free it: a failed
            # prefill, or a client gone mid cloud-ar decode, must not leave it counted open.
            self.sessions.pop(session.id, None)
            raise
        return session

    async def _generate_on_server(
        self, session: ServerSession, request: pb.Open, replies: asyncio.Queue[object], clock: SessionClock
    ) -> None:
        """cloud-ar and cloud-sd: the server generates the whole continuation, streaming it, before
        the open is done; a speculative session returns at once and waits for blocks."""
        if request.kind == pb.CLOUD_AR:
            await decode_and_stream(session, self.scheduler, replies, clock, self.metrics)
        elif request.kind == pb.CLOUD_SD:
            assert self.cloud_draft is not None  # admission refuses cloud-sd without one
            await draft_verify_and_stream(
                session,
                CloudSdSettings.from_open(request),
                self.cloud_draft,
                self.scheduler,
                self.runtime,
                replies,
                clock,
                self.metrics,
            )

    @property
    def serving(self) -> bool:
        """Whether a new session would be served: a model loaded, its pass thread running, no shutdown begun."""
        # An engine without a `model` (llama.cpp) holds its model from construction on.
        loaded = getattr(self.runtime, "model", self.runtime) is not None
        return loaded and self.scheduler.running and not self.draining

    def shutdown(self) -> None:
        self.scheduler.close()


def session_outcome(outcome: str, state: _StreamState, speculative: SpeculativeLoop | None) -> str:
    """How a stream's session ended, for the metrics: its forwards' failure when they ended it, and
    ``finished`` for a stream that closed after its generation was complete."""
    if speculative is not None and speculative.failure is not None:
        return speculative.failure
    if outcome == "closed" and state.session is not None and state.session.finished:
        return "finished"
    return outcome
