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

import heapq
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from edgespec.core.config import GenerationConfig, GenerationResult
from edgespec.decoding.early import EarlyVerdict
from edgespec.core.modes import Mode
from edgespec.core.verdict import Verdict
from edgespec.core.block import DraftBlock
from edgespec.core import edge as edge_core
from edgespec.core.colocated import ColocatedRounds, ServerDraft
from edgespec.core.verifier import Drop, IncomingBlock, SendFinal, VerifierRounds, StreamEarly, Verify
from edgespec.core.generation import Generation

# Approximate wire sizes (bytes, gRPC framing included) of the protocol's messages: enough for a
# bandwidth term, which is microseconds at WAN rates.
OPEN_BYTES, OPENED_BYTES, EARLY_BYTES, FINAL_BYTES, TOKEN_BYTES, DROPPED_BYTES = 60, 60, 30, 40, 25, 15


def block_bytes(block: DraftBlock, tagged: bool) -> int:
    rows = 0 if block.probs is None else block.probs.shape[0] * 64 * 8
    candidates = 0 if block.candidates is None else block.candidates.numel() * 4
    return 20 + 4 * len(block.tokens) + rows + candidates + (12 if tagged else 0)


@dataclass(frozen=True)
class Link:
    one_way_s: float = 0.0
    bandwidth_bytes_per_s: float = math.inf
    # Round trips spent setting up a connection before the first message (TCP + HTTP/2).
    connect_rtts: float = 0.0

    def delay(self, nbytes: int) -> float:
        return self.one_way_s + nbytes / self.bandwidth_bytes_per_s


@dataclass
class CloudJob:
    kind: str  # "prefill" | "verify" | "decode" | "draft" (cloud-sd: the server's own draft)
    session: int
    sequence: list[int]
    block: IncomingBlock | None = None
    with_exits: bool = False
    gamma: int = 0  # "draft": tokens to draft
    stop_below: float = 0.0  # "draft", greedy: end the block after a token the draft is less sure of


@dataclass(frozen=True)
class VerifyResult:
    verdict: Verdict
    early: list[EarlyVerdict]  # elapsed_s relative to the forward's start


class EdgeBackend(Protocol):
    def draft(self, sequence: Sequence[int], gamma: int, min_tokens: int = 1) -> tuple[DraftBlock, float]:
        """The block (at least ``min_tokens`` long, whatever a confidence stop says) and the seconds it cost."""


class CloudBackend(Protocol):
    def open(self, session: int, sampling: Any, seed: int) -> None:
        ...

    def run(self, jobs: list[CloudJob]) -> tuple[list[Any], float]:
        """Results per job (None, a token id, a VerifyResult, or a draft's DraftBlock) and the
        forward's seconds. A batch holds one kind of job: prefill alone, drafts together, or
        verifies and decodes together."""

    def close(self, session: int) -> None:
        ...


class _Events:
    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def at(self, time: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (max(time, self.now), next(self._order), action))

    def run(self) -> None:
        while self._heap:
            self.now, _, action = heapq.heappop(self._heap)
            action()


class _Verifier:
    """One forward at a time; whatever is waiting when it frees up runs as one batch."""

    def __init__(self, events: _Events, backend: CloudBackend, max_batch: int) -> None:
        self.events = events
        self.backend = backend
        self.max_batch = max_batch
        self.busy_s = 0.0
        self.forwards = 0
        self._queue: list[tuple[CloudJob, Callable[[Any, float, float], None]]] = []
        self._busy = False

    def submit(self, job: CloudJob, done: Callable[[Any, float, float], None]) -> None:
        """``done(result, start, end)`` runs when the job's forward starts (results are known
        then; the callback schedules what happens at ``end`` and at exits in between)."""
        self._queue.append((job, done))
        if not self._busy:
            self._next()

    def _next(self) -> None:
        if not self._queue:
            self._busy = False
            return
        head = self._queue[0][0].kind
        if head == "prefill":
            batch = [self._queue.pop(0)]
        else:
            # Drafts (cloud-sd) run the draft model, the rest the target: never in one pass.
            same = (lambda kind: kind == "draft") if head == "draft" else (lambda kind: kind in ("verify", "decode"))
            batch = [entry for entry in self._queue if same(entry[0].kind)][: self.max_batch]
            taken = {id(entry) for entry in batch}  # by identity: jobs compare by value
            self._queue = [entry for entry in self._queue if id(entry) not in taken]
        self._busy = True
        start = self.events.now
        results, cost = self.backend.run([job for job, _ in batch])
        self.busy_s += cost
        self.forwards += 1
        end = start + cost
        for (job, done), result in zip(batch, results):
            done(result, start, end)
        self.events.at(end, self._next)


class _Edge:
    """The device's drafting thread: one draft at a time, in order; a cancelled one stops at
    its next token."""

    def __init__(self, events: _Events, backend: EdgeBackend) -> None:
        self.events = events
        self.backend = backend
        self._queue: list[tuple[edge_core.Draft, Callable[[DraftBlock, float, float], None]]] = []
        self._running: dict[str, Any] | None = None

    def submit(self, draft: edge_core.Draft, done: Callable[[DraftBlock, float, float], None]) -> None:
        self._queue.append((draft, done))
        if self._running is None:
            self._next()

    def cancel(self, draft_id: int) -> None:
        self._queue = [entry for entry in self._queue if entry[0].id != draft_id]
        running = self._running
        if running is not None and running["draft"].id == draft_id and not running["cancelled"]:
            running["cancelled"] = True
            per_token = running["cost"] / max(1, len(running["block"].tokens))
            end = min(running["end"], self.events.now + per_token)
            self.events.at(end, lambda: self._finish(running))

    def _next(self) -> None:
        if not self._queue:
            self._running = None
            return
        draft, done = self._queue.pop(0)
        block, cost = self.backend.draft(draft.sequence, draft.gamma, draft.min_tokens)
        start = self.events.now
        running = {"draft": draft, "done": done, "block": block, "cost": cost, "start": start, "end": start + cost, "cancelled": False, "over": False}
        self._running = running
        self.events.at(start + cost, lambda: self._finish(running))

    def _finish(self, running: dict[str, Any]) -> None:
        if running["over"]:
            return
        running["over"] = True
        if not running["cancelled"]:
            running["done"](running["block"], running["start"], self.events.now)
        self._next()


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
        self.edge = _Edge(self.events, spec.edge) if spec.edge is not None else None
        self.client: edge_core.EdgeRounds | None = None
        self.server: VerifierRounds | None = None
        self.colocated: ColocatedRounds | None = None  # cloud-sd: the server's own rounds
        self.opened = False
        self.unsent: list[edge_core.SendBlock] = []  # blocks drafted before the session opened
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
            self.client = edge_core.EdgeRounds(self.gen)
            self._apply(self.client.start())
        self.events.at(self.events.now + connect, lambda: self._to_server(OPEN_BYTES, self._server_open))

    # ------------------------------------------------------------ server side

    def _server_open(self) -> None:
        world, spec = self.world, self.spec
        world.cloud.open(self.index, spec.config.sampling, spec.config.seed)
        sequence = list(self.gen.committed)
        self.server = VerifierRounds(sequence, len(spec.prompt_ids), spec.eos_ids, spec.config.max_new_tokens, spec.config.wants_early_verdicts(spec.mode))
        if len(sequence) >= 2:
            world.verifier.submit(CloudJob("prefill", self.index, sequence[:-1]), lambda result, start, end: self.events.at(end, self._server_opened))
        else:
            self._server_opened()

    def _server_opened(self) -> None:
        self._to_client(OPENED_BYTES, self._client_opened)
        if self.spec.mode is Mode.CLOUD_AR:
            self._server_decode()
        elif self.spec.mode is Mode.CLOUD_SD:
            assert self.server is not None
            config = self.spec.config
            self.colocated = ColocatedRounds(self.server, config.gamma, config.gamma_policy(), config.draft_stop_below())
            self._server_draft()

    # cloud-sd: draft on the verifier, verify there, stream the committed tokens

    def _server_draft(self) -> None:
        assert self.colocated is not None
        step = self.colocated.next_draft()
        if step is None:
            return
        began = self.events.now
        job = CloudJob("draft", self.index, step.sequence, gamma=step.gamma, stop_below=step.stop_below)
        self.world.verifier.submit(job, lambda block, start, end: self.events.at(end, lambda: self._server_drafted(step, block, start, end, began)))

    def _server_drafted(self, step: ServerDraft, block: DraftBlock, start: float, end: float, began: float) -> None:
        assert self.colocated is not None and self.server is not None
        self.gen.record("cloud", "draft (server)", start - self.t0, end - self.t0, step.round)
        verify = self.colocated.drafted(step, block, end - start)
        job = CloudJob("verify", self.index, verify.sequence, verify.block)
        self.world.verifier.submit(job, lambda result, v_start, v_end: self.events.at(v_end, lambda: self._server_colocated_verified(verify, result, v_end - v_start, began)))

    def _server_colocated_verified(self, verify: Verify, result: VerifyResult, verify_s: float, began: float) -> None:
        assert self.colocated is not None
        done = self.colocated.verified(verify, result.verdict, verify_s, self.events.now - began)
        final = done.final
        self._to_client(
            TOKEN_BYTES + 4 * len(final.committed),
            lambda: self._client_cloud_round(final.committed, final.finished, done.drafted, final.verdict.accepted, done.draft_s, done.verify_s),
        )
        if not final.finished:
            self._server_draft()

    def _server_decode(self) -> None:
        assert self.server is not None
        server = self.server
        self.world.verifier.submit(CloudJob("decode", self.index, list(server.sequence)), self._server_decoded)

    def _server_decoded(self, token: int, start: float, end: float) -> None:
        self.events.at(end, lambda: self._server_commit_decoded(token, end - start))

    def _server_commit_decoded(self, token: int, cost: float) -> None:
        assert self.server is not None
        step = self.server.decoded(token)
        self._to_client(TOKEN_BYTES, lambda: self._client_tokens(step.tokens, step.finished, step.reason, cost))
        if not step.finished:
            self._server_decode()

    def _server_block(self, send: edge_core.SendBlock) -> None:
        assert self.server is not None
        block = IncomingBlock(send.round, list(send.block.tokens), send.block.probs, send.assumes, send.block.candidates)
        self._server_apply(self.server.block(block))

    def _server_apply(self, actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, Verify):
                job = CloudJob("verify", self.index, action.sequence, action.block, self.server.early_verdicts)  # type: ignore[union-attr]
                self.world.verifier.submit(job, lambda result, start, end, v=action: self._server_verified(v, result, start, end))
            elif isinstance(action, StreamEarly):
                self._to_client(EARLY_BYTES, lambda a=action: self._apply(self.client.early(a.round, a.layer, a.verdict, self._t())))  # type: ignore[union-attr]
            elif isinstance(action, SendFinal):
                pass  # sent by _server_verified, which knows the forward's time
            elif isinstance(action, Drop):
                self._to_client(DROPPED_BYTES, lambda a=action: self._apply(self.client.dropped(a.round)))  # type: ignore[union-attr]

    def _server_verified(self, verify: Verify, result: VerifyResult, start: float, end: float) -> None:
        assert self.server is not None
        stats = self.gen.stats
        for early in result.early:
            # What every exit said, streamed or not: the verifier knows it (the client over the
            # network sees only the streamed ones); the in-process engine and simulator report it.
            stats.count_exit(early.layer, early.streamed, early.verdict == result.verdict)
            self.gen.record("cloud", f"exit@{early.layer}" + ("" if early.streamed else " (held)"), start + early.elapsed_s - self.t0, start + early.elapsed_s - self.t0, verify.block.round)
            streamed = self.server.early(verify.block.round, early.layer, early.verdict, early.confidence, early.elapsed_s, early.streamed)
            for action in streamed:
                self.events.at(start + early.elapsed_s, lambda a=action: self._to_client(EARLY_BYTES, lambda: self._apply(self.client.early(a.round, a.layer, a.verdict, self._t()))))  # type: ignore[union-attr]

        def decide() -> None:
            assert self.server is not None
            actions = self.server.verified(verify, result.verdict)
            final = actions[0]
            assert isinstance(final, SendFinal)
            verify_s = end - start
            self._to_client(
                FINAL_BYTES,
                lambda: self._apply(
                    self.client.final(final.round, final.verdict, final.finished, final.pipelined, verify_s, self._t())  # type: ignore[union-attr]
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
            self.client.sent(send.round, self._t())
        self.unsent = []

    def _client_tokens(self, tokens: list[int], finished: bool, reason: str, compute_s: float) -> None:
        self.gen.count_decode(compute_s)
        self.gen.commit(tokens, self._t())
        if self.spec.on_commit:
            self.spec.on_commit(tokens)
        if finished:
            self.gen.finish(reason or "length")
            self._end()

    def _client_cloud_round(self, tokens: list[int], finished: bool, drafted: int, accepted: int, draft_s: float, verify_s: float) -> None:
        self.gen.count_cloud_round(drafted, accepted, draft_s, verify_s)
        self.gen.commit(tokens, self._t())
        if self.spec.on_commit:
            self.spec.on_commit(tokens)
        if finished:
            self.gen.finish("eos" if self.gen.produced and self.gen.committed[-1] in self.gen.eos else "length")
            self._end()

    def _send(self, send: edge_core.SendBlock) -> None:
        self.gen.stats.bytes_sent += block_bytes(send.block, send.assumes is not None)
        self._to_server(block_bytes(send.block, send.assumes is not None), lambda: self._server_block(send))

    def _apply(self, actions: list[edge_core.ClientAction]) -> None:
        for action in actions:
            if isinstance(action, edge_core.Draft):
                assert self.edge is not None and self.client is not None
                self.edge.submit(action, lambda block, start, end, d=action: self._apply(self.client.drafted(d.id, block, start - self.t0, end - self.t0)))  # type: ignore[union-attr]
            elif isinstance(action, edge_core.CancelDraft):
                assert self.edge is not None
                self.edge.cancel(action.id)
            elif isinstance(action, edge_core.SendBlock):
                if self.opened:
                    self._send(action)
                else:
                    self.unsent.append(action)
            elif isinstance(action, edge_core.Commit):
                if self.spec.on_commit:
                    self.spec.on_commit(action.tokens)
            elif isinstance(action, edge_core.Finished):
                self._end()

    def _end(self) -> None:
        if self.done:
            return
        self.done = True
        if self.server is not None:
            self.server.close()
        self.world.cloud.close(self.index)
        self.gen.stats.total_s = self._t()

    def result(self) -> GenerationResult:
        return GenerationResult(tokens=self.gen.new_tokens, stats=self.gen.stats)


class VirtualClock:
    """Run clients to completion against one verifier; returns each client's result."""

    def __init__(self, cloud: CloudBackend, max_batch: int = 32) -> None:
        self.events = _Events()
        self.cloud = cloud
        self.verifier = _Verifier(self.events, cloud, max_batch)

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
