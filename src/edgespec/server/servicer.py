"""The gRPC service: thin handlers that decode a message, hand the session's forward to the
batch scheduler, and encode what comes back. Early verdicts are pushed onto the reply stream from
inside the (batched) forward pass, the moment an exit clears its threshold.

Admission control lives here too: a bounded number of open sessions, each with an idle timeout
and a maximum lifetime, so memory stays bounded whatever clients do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator

import grpc

from edgespec.decoding.early import EarlyVerdict
from edgespec.core.gamma import AdaptiveGamma
from edgespec.models.target import TargetRuntime
from edgespec.prompting import render_prompt
from edgespec.server.cloud_draft import CloudDraft
from edgespec.server.scheduler import AdmissionLimits, BatchScheduler, Job
from edgespec.core.colocated import ColocatedRounds, ColocatedVerified, ServerDrafted
from edgespec.core.verifier import (
    Drop,
    ExitReached,
    IncomingBlock,
    OutOfOrder,
    Reject,
    SendFinal,
    ServerAction,
    Verified,
    Verify,
)
from edgespec.server.prefix_cache import TenantPrefixCaches
from edgespec.server.refusals import Refused
from edgespec.server.session import ServerSession, SessionLimits
from edgespec.transport import edgespec_pb2 as pb
from edgespec.transport import edgespec_pb2_grpc as pb_grpc
from edgespec.transport.security import AUTH_METADATA_KEY
from edgespec.transport.codec import PROTOCOL_VERSION, ProtocolError, candidates_from_wire, distributions_from_wire, sampling_from_wire, verdict_of
from edgespec.transport.validation import check_block, check_open, decoded

logger = logging.getLogger(__name__)
_END = object()


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
    ) -> None:
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
        self.scheduler = BatchScheduler(runtime, admission)
        self.sessions: dict[str, ServerSession] = {}
        # Prompt prefixes' KV kept across sessions, per tenant (server/prefix_cache.py); 0: off.
        self.prefix_caches = TenantPrefixCaches(runtime.model.config, prefix_cache_tokens) if prefix_cache_tokens > 0 else None

    async def Session(self, request_iterator: AsyncIterator[pb.ClientMessage], context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ServerMessage]:  # noqa: N802
        replies: asyncio.Queue[object] = asyncio.Queue()
        tenant = TenantPrefixCaches.identity(dict(context.invocation_metadata() or ()).get(AUTH_METADATA_KEY)) if self.prefix_caches else ""
        worker = asyncio.create_task(self._serve_session(request_iterator, replies, tenant))
        try:
            while True:
                reply = await replies.get()
                if reply is _END:
                    break
                yield reply  # type: ignore[misc]
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)

    async def _serve_session(self, requests: AsyncIterator[pb.ClientMessage], replies: asyncio.Queue[object], tenant: str = "") -> None:
        session: ServerSession | None = None
        verifying: asyncio.Task | None = None  # the session's forward in flight, if any
        messages = decoded(requests)
        opened_at = time.monotonic()
        try:
            while True:
                try:
                    message = await asyncio.wait_for(messages.__anext__(), self._read_timeout(opened_at))
                except StopAsyncIteration:
                    # A client may half-close right after its last block: answer what it sent.
                    if verifying is not None:
                        await verifying
                    break
                except asyncio.TimeoutError:
                    raise self._expired(opened_at) from None
                kind = message.WhichOneof("kind")
                if kind == "open":
                    if session is not None:
                        raise ProtocolError(pb.BAD_REQUEST, "the session is already open")
                    session = await self._open(message.open, replies, opened_at, tenant)
                elif kind == "block":
                    if session is None:
                        raise ProtocolError(pb.BAD_REQUEST, "send open before any block")
                    verifying = self._carry_out(session, self._take_block(session, message.block), replies, verifying)
                elif kind == "close":
                    if session is None:
                        raise ProtocolError(pb.BAD_REQUEST, "close before open: there is no session to close")
                    break
                else:
                    raise ProtocolError(pb.BAD_REQUEST, "empty message")
        except (ProtocolError, Refused) as error:
            logger.info("session %s: %s", session.id if session else "-", error)
            replies.put_nowait(_error_reply(error))
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug must end this session, never the server
            logger.exception("session %s failed", session.id if session else "-")
            replies.put_nowait(pb.ServerMessage(error=pb.Error(code=pb.INTERNAL, message=f"internal error: {error}")))
        finally:
            if session is not None:
                self.sessions.pop(session.id, None)
                session.keep_prefix()  # a finished generation's cache, for the tenant's next prompt
                session.rounds.session_closed()  # held pipelined blocks go without compute
            if verifying is not None:
                verifying.cancel()
                await asyncio.gather(verifying, return_exceptions=True)
            replies.put_nowait(_END)

    def _read_timeout(self, opened_at: float) -> float:
        lifetime_left = self.limits.max_lifetime_s - (time.monotonic() - opened_at)
        return max(0.0, min(self.limits.idle_timeout_s, lifetime_left))

    def _expired(self, opened_at: float) -> ProtocolError:
        if time.monotonic() - opened_at >= self.limits.max_lifetime_s:
            return ProtocolError(pb.EXPIRED, f"the session reached its maximum lifetime of {self.limits.max_lifetime_s:g} s")
        return ProtocolError(pb.EXPIRED, f"no message for {self.limits.idle_timeout_s:g} s: the session was ended to free its memory")

    async def _open(self, request: pb.Open, replies: asyncio.Queue[object], opened_at: float, tenant: str = "") -> ServerSession:
        if len(self.sessions) >= self.admission.max_sessions:
            raise ProtocolError(pb.BUSY, f"the server is at its limit of {self.admission.max_sessions} open sessions; retry later")
        if request.protocol_version != PROTOCOL_VERSION:
            raise ProtocolError(
                pb.UNSUPPORTED_VERSION,
                f"protocol version {request.protocol_version} is not supported; this server speaks {PROTOCOL_VERSION}",
            )
        if request.kind not in (pb.CLOUD_AR, pb.SPECULATIVE, pb.CLOUD_SD):
            raise ProtocolError(pb.BAD_REQUEST, "open.kind must be CLOUD_AR, SPECULATIVE or CLOUD_SD")
        if request.kind == pb.CLOUD_SD:
            if self.cloud_draft is None:
                raise ProtocolError(pb.BAD_REQUEST, "cloud-sd needs a draft model on the server: this one was started without --cloud-draft")
            if not request.gamma <= self.limits.max_block or not request.max_gamma <= self.limits.max_block:
                raise ProtocolError(pb.TOO_LARGE, f"cloud-sd gamma and max_gamma must be <= {self.limits.max_block}")
        check_open(request, self.limits.max_new_tokens)
        sampling = sampling_from_wire(request.sampling)
        prompt_ids = list(request.prompt_ids)
        if request.messages:
            if prompt_ids:
                raise ProtocolError(pb.BAD_REQUEST, "send prompt_ids or messages, not both")
            try:
                prompt_ids = render_prompt(self.tokenizer, [{"role": m.role, "content": m.content} for m in request.messages])
            except Exception as error:
                raise ProtocolError(pb.BAD_REQUEST, f"cannot render the chat messages: {error}") from None
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
            # Receive-only sessions never stream early verdicts.
            early_verdicts=request.kind == pb.SPECULATIVE and bool(request.early_verdicts),
        )
        self.sessions[session.id] = session
        try:
            prefill = session.prefill_job()
            prefill_ms = (await self.scheduler.submit(prefill)).forward_ms if prefill is not None else 0.0
            replies.put_nowait(
                pb.ServerMessage(
                    opened=pb.Opened(
                        session_id=session.id,
                        protocol_version=PROTOCOL_VERSION,
                        prompt_ids=prompt_ids,
                        eos_ids=sorted(self.eos_ids),
                        exit_layers=list(self.runtime.exits.layers) if self.runtime.exits else [],
                        num_layers=self.runtime.num_layers,
                        prefill_ms=prefill_ms,
                        target=self.target_name,
                    )
                )
            )
            logger.info("session %s opened: %d prompt tokens (%d cached), kind %s", session.id, len(prompt_ids), session.reused_prefix, pb.SessionKind.Name(request.kind))
            if request.kind == pb.CLOUD_AR:
                await self._decode_all(session, replies, opened_at)
            elif request.kind == pb.CLOUD_SD:
                await self._speculate_all(session, request, replies, opened_at)
        except BaseException:
            # Until _open returns, the caller does not hold the session to free it: a failed
            # prefill, or a client gone mid cloud-ar decode, must not leave it counted open.
            self.sessions.pop(session.id, None)
            raise
        return session

    async def _decode_all(self, session: ServerSession, replies: asyncio.Queue[object], opened_at: float) -> None:
        if session.finished:  # a resumed session whose text was already complete (EOS or budget)
            replies.put_nowait(pb.ServerMessage(tokens=pb.Tokens(ids=[], finished=True)))
        while not session.finished:
            if time.monotonic() - opened_at >= self.limits.max_lifetime_s:
                raise self._expired(opened_at)
            result = await self.scheduler.submit(session.decode_job())
            token, finished = result.value
            replies.put_nowait(pb.ServerMessage(tokens=pb.Tokens(ids=[token], finished=finished, compute_ms=result.forward_ms)))

    async def _speculate_all(self, session: ServerSession, request: pb.Open, replies: asyncio.Queue[object], opened_at: float) -> None:
        """cloud-sd: draft with the server's own draft (a compute job of its own, batched with the
        other sessions waiting to draft: never beside a target forward), verify through the batch
        scheduler like any block, stream what commits."""
        assert self.cloud_draft is not None
        gamma = request.gamma or 4
        policy = AdaptiveGamma(initial=gamma, max_gamma=max(gamma, request.max_gamma or 8)) if request.adaptive_gamma else None
        colocated = ColocatedRounds(session.rounds, gamma, policy, float(request.draft_stop) if session.sampling.greedy else 0.0)
        # Its cache lives as long as this coroutine (and a draft job in flight): no explicit free
        # that could race a draft still running on the compute thread.
        drafter = self.cloud_draft.session(session.sampling, session.seed)
        if session.finished:  # a resumed session whose text was already complete
            replies.put_nowait(pb.ServerMessage(tokens=pb.Tokens(ids=[], finished=True)))
        while (step := colocated.next_draft()) is not None:
            if time.monotonic() - opened_at >= self.limits.max_lifetime_s:
                raise self._expired(opened_at)
            began = time.perf_counter()
            wanted = self.cloud_draft.request(drafter, step.sequence, step.gamma, step.stop_below)
            try:
                drafted = await self.scheduler.submit(Job.other(lambda wanted=wanted: self.cloud_draft.drafted(wanted)))  # type: ignore[union-attr]
            except BaseException:
                wanted.cancelled = True  # a batch that has not started yet skips it
                raise
            draft_ms = wanted.batch_ms  # the batched drafting it rode in, like a verify's forward
            verify = colocated.drafted(ServerDrafted(step=step, block=drafted.value, draft_s=draft_ms / 1000))
            result = await self.scheduler.submit(session.verify_job(verify, None))
            verdict, _ = result.value
            done = colocated.verified(
                ColocatedVerified(verify=verify, verdict=verdict, verify_s=result.forward_ms / 1000, round_s=time.perf_counter() - began)
            )
            self.runtime.rollback(session.rounds.sequence, kv=session.kv)
            final = done.final
            replies.put_nowait(pb.ServerMessage(tokens=pb.Tokens(
                ids=final.committed, finished=final.finished, compute_ms=result.forward_ms,
                draft_ms=draft_ms, drafted=done.drafted, accepted=verdict.accepted,
            )))

    def _take_block(self, session: ServerSession, block: pb.DraftBlock) -> list[ServerAction]:
        check_block(block, self.runtime.vocab_size, self.limits.max_block, session.sampling.greedy)
        assumes = (block.assumes.round, verdict_of(block.assumes)) if block.HasField("assumes") else None
        probs = None if session.sampling.greedy else distributions_from_wire(block.probs, self.runtime.vocab_size)
        candidates = candidates_from_wire(block.candidates) if self.exit_candidates and session.sampling.greedy else None
        try:
            return session.rounds.block_arrived(IncomingBlock(block.round, list(block.tokens), probs, assumes, candidates))
        except OutOfOrder as error:
            raise ProtocolError(pb.OUT_OF_ORDER, str(error)) from None

    def _carry_out(
        self, session: ServerSession, actions: list[ServerAction], replies: asyncio.Queue[object], verifying: asyncio.Task | None
    ) -> asyncio.Task | None:
        """Send what the round core says; start the forward it asks for (the core never asks for
        a second while one is in flight)."""
        verify = _send_actions(actions, replies)
        return asyncio.ensure_future(self._verify(session, verify, replies)) if verify is not None else verifying

    async def _verify(self, session: ServerSession, verify: Verify, replies: asyncio.Queue[object]) -> None:
        """Run the forwards the core asks for, one after another, until it asks for none."""
        loop = asyncio.get_running_loop()
        rounds = session.rounds
        try:
            while True:
                round_index = verify.block.round

                def stream_early(early: EarlyVerdict) -> None:
                    def deliver() -> None:
                        reached = ExitReached(
                            round=round_index, layer=early.layer, verdict=early.verdict, confidence=early.confidence,
                            elapsed_s=early.elapsed_s, streamed=early.streamed,
                        )
                        for action in rounds.exit_reached(reached):
                            replies.put_nowait(pb.ServerMessage(early=pb.EarlyVerdict(
                                round=action.round, exit_layer=action.layer, accepted=action.verdict.accepted,
                                next_token=action.verdict.next_token, confidence=action.confidence, elapsed_ms=action.elapsed_s * 1000,
                            )))
                    loop.call_soon_threadsafe(deliver)

                on_early = stream_early if rounds.early_verdicts else None
                result = await self.scheduler.submit(session.verify_job(verify, on_early))
                verdict, judge = result.value
                actions = rounds.verified(Verified(verify=verify, verdict=verdict))
                self.runtime.rollback(rounds.sequence, kv=session.kv)
                final = actions[0]
                assert isinstance(final, SendFinal)
                replies.put_nowait(pb.ServerMessage(final=pb.FinalVerdict(
                    round=final.round, accepted=verdict.accepted, next_token=verdict.next_token, finished=final.finished,
                    verify_ms=result.forward_ms, queued_ms=result.queued_ms, pipelined=final.pipelined,
                    timings=[pb.SegmentTiming(name=f"exit {e.layer}", ms=e.elapsed_s * 1000) for e in (judge.verdicts if judge else [])],
                )))
                following = _send_actions(actions[1:], replies)
                if following is None:
                    return
                verify = following
        except asyncio.CancelledError:
            raise
        except (ProtocolError, Refused) as error:
            logger.info("session %s: %s", session.id, error)
            replies.put_nowait(_error_reply(error))
            replies.put_nowait(_END)
        except Exception as error:  # a bug must end this session, never the server
            logger.exception("session %s failed", session.id)
            replies.put_nowait(pb.ServerMessage(error=pb.Error(code=pb.INTERNAL, message=f"internal error: {error}")))
            replies.put_nowait(_END)

    def shutdown(self) -> None:
        self.scheduler.close()


def _send_actions(actions: list[ServerAction], replies: asyncio.Queue[object]) -> Verify | None:
    """Send the drops the round core decided, refuse what it rejected; the forward it asks for
    next, if any (a final verdict is sent by ``_verify``, which knows the forward's timings)."""
    following = None
    for action in actions:
        if isinstance(action, Drop):
            replies.put_nowait(pb.ServerMessage(dropped=pb.Dropped(round=action.round)))
        elif isinstance(action, Reject):
            raise ProtocolError(pb.OUT_OF_ORDER, action.reason)
        elif isinstance(action, Verify):
            following = action
        elif isinstance(action, SendFinal):
            raise AssertionError("a final verdict comes from _verify, with its forward's timings")
    return following


def _error_reply(error: ProtocolError | Refused) -> pb.ServerMessage:
    code = pb.ErrorCode.Value(error.code) if isinstance(error, Refused) else error.code
    return pb.ServerMessage(error=pb.Error(code=code, message=str(error)))
