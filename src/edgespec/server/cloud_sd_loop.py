"""The ``cloud-sd`` mode's loop (the co-located baseline): the server drafts with its own draft
model and verifies with the target, both through the pass thread, and streams what each round
commits. The round logic is the co-located round core's; this loop only runs its jobs."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from edgespec.core.colocated import ColocatedRounds, ColocatedVerified, ServerDrafted
from edgespec.core.gamma import AdaptiveGamma
from edgespec.models.target import TargetRuntime
from edgespec.server.admission import SessionClock
from edgespec.server.cloud_draft import CloudDraft
from edgespec.server.encoding import committed_tokens_reply, nothing_left_reply
from edgespec.server.jobs import Job
from edgespec.server.metrics import NoMetrics, VerifierMetrics
from edgespec.server.pass_thread import BatchScheduler
from edgespec.server.session import ServerSession
from edgespec.transport import edgespec_pb2 as pb

DEFAULT_GAMMA = 4
DEFAULT_MAX_GAMMA = 8


@dataclass(frozen=True)
class CloudSdSettings:
    """How a cloud-sd session drafts, as its ``open`` asked (0 on the wire: the default)."""

    gamma: int
    max_gamma: int  # 0: the default
    adaptive_gamma: bool
    draft_stop: float  # greedy: end a block after a token the draft is less sure of

    @classmethod
    def from_open(cls, request: pb.Open) -> "CloudSdSettings":
        return cls(request.gamma or DEFAULT_GAMMA, request.max_gamma, request.adaptive_gamma, float(request.draft_stop))


async def draft_verify_and_stream(
    session: ServerSession,
    settings: CloudSdSettings,
    cloud_draft: CloudDraft,
    scheduler: BatchScheduler,
    runtime: TargetRuntime,
    replies: asyncio.Queue[object],
    clock: SessionClock,
    metrics: VerifierMetrics = NoMetrics(),
) -> None:
    """Draft with the server's own draft (a compute job of its own, batched with the other
    sessions waiting to draft: never beside a target forward), verify through the pass thread like
    any block, stream what commits; until the session finishes."""
    gamma = settings.gamma
    policy = (
        AdaptiveGamma(initial=gamma, max_gamma=max(gamma, settings.max_gamma or DEFAULT_MAX_GAMMA))
        if settings.adaptive_gamma
        else None
    )
    colocated = ColocatedRounds(session.rounds, gamma, policy, settings.draft_stop if session.sampling.greedy else 0.0)
    # Its cache lives as long as this coroutine (and a draft job in flight): no explicit free
    # that could race a draft still running on the compute thread.
    drafter = cloud_draft.session(session.sampling, session.seed)
    if session.finished:  # a resumed session whose text was already complete
        replies.put_nowait(nothing_left_reply())
    while (step := colocated.next_draft()) is not None:
        clock.check_alive()
        began = time.perf_counter()
        wanted = cloud_draft.enqueue(drafter, step.sequence, step.gamma, step.stop_below)
        try:
            drafted = await scheduler.submit(Job.standalone(lambda wanted=wanted: cloud_draft.draft_queued(wanted)))
        except BaseException:
            wanted.cancelled = True  # a batch that has not started yet skips it
            raise
        draft_ms = wanted.batch_ms  # the batched drafting it rode in, like a verify's forward
        verify = colocated.drafted(ServerDrafted(step=step, block=drafted.value, draft_s=draft_ms / 1000))
        result = await scheduler.submit(session.verify_job(verify, None))
        verdict, _, logprobs = result.value
        done = colocated.verified(
            ColocatedVerified(
                verify=verify, verdict=verdict, verify_s=result.forward_ms / 1000, round_s=time.perf_counter() - began
            )
        )
        runtime.rollback(session.rounds.sequence, kv=session.kv)
        final = done.final
        replies.put_nowait(
            committed_tokens_reply(
                final.committed,
                final.finished,
                result.forward_ms,
                draft_ms,
                done.drafted,
                verdict.accepted,
                logprobs,
            )
        )
        metrics.round_verified(pb.CLOUD_SD, done.drafted, verdict.accepted, len(final.committed), False)
