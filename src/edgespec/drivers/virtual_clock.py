"""A discrete-event world that drives the round core: edge devices, links and one verifier on a
virtual clock.

Each client's edge drafts one block at a time; each message crosses its link after the link's
one-way delay plus its size over the bandwidth; the verifier runs one forward at a time, batching
whatever verify or decode jobs are waiting when it frees up (a prefill runs alone), exactly as the
gRPC server's scheduler does. In ``cloud-sd`` the verifier drafts too (``colocated.py``): a
session's draft is a verifier job of its own kind, batched only with other sessions' drafts, so
it occupies the verifier between target forwards. What a draft or a forward *produces* and what it *costs* come from
backends: the real models with their measured wall time (the in-process engine), or a recorded
trace with a hardware cost profile (the simulator). The round logic is ``EdgeRounds`` and
``VerifierRounds``, the same objects the gRPC drivers run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from edgespec.core.block import DraftBlock
from edgespec.core.cloud_ar import CloudRoundDecided, ReceiveAction, ReceiveOnlyRounds, TokensDecoded
from edgespec.core.colocated import CloudRound, ColocatedRounds, ColocatedVerified, ServerDraft, ServerDrafted
from edgespec.core.config import GenerationConfig, GenerationResult
from edgespec.core.edge import EdgeRounds
from edgespec.core.edge_events import (
    BlockDropped,
    BlockSent,
    CancelDraft,
    Commit,
    Draft,
    Drafted,
    EarlyVerdictArrived,
    EdgeAction,
    FinalVerdictArrived,
    Finished,
    SendBlock,
)
from edgespec.core.generation import Generation
from edgespec.core.modes import Mode
from edgespec.core.verifier import (
    Decoded,
    Drop,
    ExitReached,
    IncomingBlock,
    SendFinal,
    StreamEarly,
    Verified,
    VerifierRounds,
    Verify,
)
from edgespec.drivers.backend_interface import CloudBackend, CloudJob, EdgeBackend, JobKind, VerifyResult
from edgespec.drivers.virtual_devices import (
    DROPPED_BYTES,
    EARLY_BYTES,
    FINAL_BYTES,
    OPEN_BYTES,
    OPENED_BYTES,
    TOKEN_BYTES,
    EventQueue,
    Link,
    VirtualEdge,
    VirtualVerifier,
    block_bytes,
)


@dataclass
class ClientSpec:
    prompt_ids: list[int]
    mode: Mode
    config: GenerationConfig
    edge: EdgeBackend | None
    link: Link = field(default_factory=Link)
    start_s: float = 0.0
    eos_ids: frozenset[int] = frozenset()
    on_commit: Callable[[list[int]], None] | None = None


class _Session:
    """One client's generation: the client core at the edge, the server core at the verifier,
    messages between them delayed by the link."""

    def __init__(self, world: "VirtualClock", index: int, spec: ClientSpec) -> None:
        self.world, self.index, self.spec = world, index, spec
        self.events = world.events
        self.gen = Generation(spec.prompt_ids, spec.mode, spec.config, eos_ids=spec.eos_ids)
        self.edge = VirtualEdge(self.events, spec.edge) if spec.edge is not None else None
        self.client: EdgeRounds | None = None
        self.receiver: ReceiveOnlyRounds | None = None  # cloud-ar, cloud-sd: the edge only receives
        self.server: VerifierRounds | None = None
        self.colocated: ColocatedRounds | None = None  # cloud-sd: the server's own rounds
        self.opened = False
        self.unsent: list[SendBlock] = []  # blocks drafted before the session opened
        self.t0 = spec.start_s
        self.done = False
        self._arrivals: dict[str, float] = {}  # the last message's arrival, per direction

    # the edge's clock: seconds since this client started
    def _t(self) -> float:
        return self.events.now - self.t0

    def _to_server(self, nbytes: int, action: Callable[[], None]) -> None:
        self._deliver("up", nbytes, action)

    def _to_client(self, nbytes: int, action: Callable[[], None]) -> None:
        self._deliver("down", nbytes, action)

    def _deliver(self, direction: str, nbytes: int, action: Callable[[], None]) -> None:
        # One ordered stream each way, as gRPC over TCP: a small message sent right after a
        # large one does not overtake it (a pipelined branch never reaches the server before
        # the block it assumes a verdict of).
        at = max(self.events.now + self.spec.link.delay(nbytes), self._arrivals.get(direction, 0.0))
        self._arrivals[direction] = at
        self.events.at(at, action)

    def start(self) -> None:
        link = self.spec.link
        connect = link.connect_rtts * 2 * link.one_way_s
        if self.spec.mode.edge_rounds:
            self.client = EdgeRounds(self.gen)
            self._apply(self.client.started())
        elif self.spec.mode in (Mode.CLOUD_AR, Mode.CLOUD_SD):
            self.receiver = ReceiveOnlyRounds(self.gen)
        self.events.at(self.events.now + connect, lambda: self._to_server(OPEN_BYTES, self._server_open))

    # ------------------------------------------------------------ server side

    def _server_open(self) -> None:
        world, spec = self.world, self.spec
        world.cloud.open(self.index, spec.config.sampling, spec.config.seed)
        sequence = list(self.gen.committed)
        self.server = VerifierRounds(
            sequence,
            len(spec.prompt_ids),
            spec.eos_ids,
            spec.config.max_new_tokens,
            spec.config.wants_early_verdicts(spec.mode),
        )
        if len(sequence) >= 2:
            world.verifier.submit(
                CloudJob(JobKind.PREFILL, self.index, sequence[:-1]),
                lambda result, start, end: self.events.at(end, self._server_opened),
            )
        else:
            self._server_opened()

    def _server_opened(self) -> None:
        self._to_client(OPENED_BYTES, self._client_opened)
        if self.spec.mode is Mode.CLOUD_AR:
            self._server_decode()
        elif self.spec.mode is Mode.CLOUD_SD:
            assert self.server is not None
            config = self.spec.config
            self.colocated = ColocatedRounds(
                self.server, config.gamma, config.gamma_policy(), config.draft_stop_below()
            )
            self._server_draft()

    # cloud-sd: draft on the verifier, verify there, stream the committed tokens

    def _server_draft(self) -> None:
        assert self.colocated is not None
        step = self.colocated.next_draft()
        if step is None:
            return
        began = self.events.now
        job = CloudJob(JobKind.DRAFT, self.index, step.sequence, gamma=step.gamma, stop_below=step.stop_below)
        self.world.verifier.submit(
            job,
            lambda block, start, end: self.events.at(end, lambda: self._server_drafted(step, block, start, end, began)),
        )

    def _server_drafted(self, step: ServerDraft, block: DraftBlock, start: float, end: float, began: float) -> None:
        assert self.colocated is not None and self.server is not None
        self.gen.record("cloud", "draft (server)", start - self.t0, end - self.t0, step.round)
        verify = self.colocated.drafted(ServerDrafted(step=step, block=block, draft_s=end - start))
        job = CloudJob(JobKind.VERIFY, self.index, verify.sequence, verify.block)
        self.world.verifier.submit(
            job,
            lambda result, v_start, v_end: self.events.at(
                v_end, lambda: self._server_colocated_verified(verify, result, v_end - v_start, began)
            ),
        )

    def _server_colocated_verified(self, verify: Verify, result: VerifyResult, verify_s: float, began: float) -> None:
        assert self.colocated is not None
        done = self.colocated.verified(
            ColocatedVerified(verify=verify, verdict=result.verdict, verify_s=verify_s, round_s=self.events.now - began)
        )
        final = done.final
        self._to_client(
            TOKEN_BYTES + 4 * len(final.committed),
            lambda: self._client_cloud_round(done),
        )
        if not final.finished:
            self._server_draft()

    def _server_decode(self) -> None:
        assert self.server is not None
        server = self.server
        self.world.verifier.submit(CloudJob(JobKind.DECODE, self.index, list(server.sequence)), self._server_decoded)

    def _server_decoded(self, token: int, start: float, end: float) -> None:
        self.events.at(end, lambda: self._server_commit_decoded(token, end - start))

    def _server_commit_decoded(self, token: int, cost: float) -> None:
        assert self.server is not None
        step = self.server.decoded(Decoded(token=token))
        self._to_client(TOKEN_BYTES, lambda: self._client_tokens(step.tokens, step.finished, cost))
        if not step.finished:
            self._server_decode()

    def _server_block(self, send: SendBlock) -> None:
        assert self.server is not None
        block = IncomingBlock(
            send.round, list(send.block.tokens), send.block.probs, send.assumes, send.block.candidates
        )
        self._server_apply(self.server.block_arrived(block))

    def _server_apply(self, actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, Verify):
                job = CloudJob(JobKind.VERIFY, self.index, action.sequence, action.block, self.server.early_verdicts)  # type: ignore[union-attr]
                self.world.verifier.submit(
                    job, lambda result, start, end, v=action: self._server_verified(v, result, start, end)
                )
            elif isinstance(action, StreamEarly):
                self._to_client(EARLY_BYTES, lambda a=action: self._client_early(a))
            elif isinstance(action, SendFinal):
                pass  # sent by _server_verified, which knows the forward's time
            elif isinstance(action, Drop):
                self._to_client(DROPPED_BYTES, lambda a=action: self._client_dropped(a))

    def _server_verified(self, verify: Verify, result: VerifyResult, start: float, end: float) -> None:
        assert self.server is not None
        stats = self.gen.stats
        for early in result.early:
            # What every exit said, streamed or not: the verifier knows it (the client over the
            # network sees only the streamed ones); the in-process engine and simulator report it.
            stats.count_exit(early.layer, early.streamed, early.verdict == result.verdict)
            self.gen.record(
                "cloud",
                f"exit@{early.layer}" + ("" if early.streamed else " (held)"),
                start + early.elapsed_s - self.t0,
                start + early.elapsed_s - self.t0,
                verify.block.round,
            )
            reached = ExitReached(
                round=verify.block.round,
                layer=early.layer,
                verdict=early.verdict,
                confidence=early.confidence,
                elapsed_s=early.elapsed_s,
                streamed=early.streamed,
            )
            for action in self.server.exit_reached(reached):
                self.events.at(
                    start + early.elapsed_s,
                    lambda a=action: self._to_client(EARLY_BYTES, lambda: self._client_early(a)),
                )

        def decide() -> None:
            assert self.server is not None
            actions = self.server.verified(Verified(verify=verify, verdict=result.verdict))
            final = actions[0]
            assert isinstance(final, SendFinal)
            verify_s = end - start
            self._to_client(
                FINAL_BYTES,
                lambda: self._apply(
                    self.client.final_verdict_arrived(  # type: ignore[union-attr]
                        FinalVerdictArrived(
                            round=final.round,
                            verdict=final.verdict,
                            server_finished=final.finished,
                            pipelined=final.pipelined,
                            verify_s=verify_s,
                            at=self._t(),
                        )
                    )
                ),
            )
            self._server_apply(actions[1:])

        self.events.at(end, decide)

    # ------------------------------------------------------------ client side

    def _client_opened(self) -> None:
        self.opened = True
        for send in self.unsent:
            self._send(send)
            assert self.client is not None
            self.client.block_sent(BlockSent(round=send.round, at=self._t()))
        self.unsent = []

    def _client_tokens(self, tokens: list[int], finished: bool, compute_s: float) -> None:
        assert self.receiver is not None
        decoded = TokensDecoded(tokens=tokens, finished=finished, compute_s=compute_s, at=self._t())
        self._apply(self.receiver.tokens_decoded(decoded))

    def _client_cloud_round(self, done: CloudRound) -> None:
        assert self.receiver is not None
        final = done.final
        decided = CloudRoundDecided(
            tokens=final.committed,
            finished=final.finished,
            drafted=done.drafted,
            accepted=final.verdict.accepted,
            draft_s=done.draft_s,
            verify_s=done.verify_s,
            at=self._t(),
        )
        self._apply(self.receiver.cloud_round_decided(decided))

    def _client_early(self, action: StreamEarly) -> None:
        assert self.client is not None
        arrived = EarlyVerdictArrived(round=action.round, layer=action.layer, verdict=action.verdict, at=self._t())
        self._apply(self.client.early_verdict_arrived(arrived))

    def _client_dropped(self, action: Drop) -> None:
        assert self.client is not None
        self._apply(self.client.block_dropped(BlockDropped(round=action.round)))

    def _client_drafted(self, draft: Draft, block: DraftBlock, start: float, end: float) -> None:
        assert self.client is not None
        self._apply(
            self.client.drafted(Drafted(draft_id=draft.id, block=block, start=start - self.t0, end=end - self.t0))
        )

    def _send(self, send: SendBlock) -> None:
        self.gen.stats.bytes_sent += block_bytes(send.block, send.assumes is not None)
        self._to_server(block_bytes(send.block, send.assumes is not None), lambda: self._server_block(send))

    def _apply(self, actions: list[EdgeAction] | list[ReceiveAction]) -> None:
        for action in actions:
            if isinstance(action, Draft):
                assert self.edge is not None and self.client is not None
                self.edge.submit(action, lambda block, start, end, d=action: self._client_drafted(d, block, start, end))
            elif isinstance(action, CancelDraft):
                assert self.edge is not None
                self.edge.cancel(action.id)
            elif isinstance(action, SendBlock):
                if self.opened:
                    self._send(action)
                else:
                    self.unsent.append(action)
            elif isinstance(action, Commit):
                if self.spec.on_commit:
                    self.spec.on_commit(action.tokens)
            elif isinstance(action, Finished):
                self._end()

    def _end(self) -> None:
        if self.done:
            return
        self.done = True
        if self.server is not None:
            self.server.session_closed()
        self.world.cloud.close(self.index)
        self.gen.stats.total_s = self._t()

    def result(self) -> GenerationResult:
        return GenerationResult(tokens=self.gen.new_tokens, stats=self.gen.stats)


class VirtualClock:
    """Run clients to completion against one verifier; returns each client's result."""

    def __init__(self, cloud: CloudBackend, max_batch: int = 32) -> None:
        self.events = EventQueue()
        self.cloud = cloud
        self.verifier = VirtualVerifier(self.events, cloud, max_batch)

    def run(self, clients: Sequence[ClientSpec]) -> list[GenerationResult]:
        sessions = [_Session(self, index, spec) for index, spec in enumerate(clients)]
        for session in sessions:
            self.events.at(session.spec.start_s, session.start)
        self.events.run()
        unfinished = [s.index for s in sessions if not s.done]
        if unfinished:
            raise RuntimeError(f"simulated sessions {unfinished} never finished (a round-core bug)")
        return [session.result() for session in sessions]

    @property
    def wall_s(self) -> float:
        return self.events.now
