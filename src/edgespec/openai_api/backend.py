"""The edge side of a request: a slot (edge client + draft), a generation task, text events.

Concurrency. A draft runtime holds one KV cache, so two generations must never draft on the same
runtime at once. The backend owns a fixed pool of slots, each an ``EdgeClient`` with a draft
runtime of its own: for the `transformers` backend the runtimes share the model's weights (each
has only its own cache), for llama.cpp each slot loads its own context. A request takes a free
slot (or waits for one) and gives it back once its generation has ended *and* its draft worker
is idle, so a cancelled generation's last draft step can never overlap the next one's.

Each request's generation is one ``EdgeClient.agenerate`` task with its own cloud session; its
``on_commit`` callback turns committed tokens into text, cuts at stop strings and feeds an
asyncio queue that the HTTP handler reads. Cancelling the task (client gone) closes the gRPC
stream, which frees the session on the server at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from edgespec.client.edge_client import ClientOptions, EdgeClient, ServerError
from edgespec.core.config import GenerationConfig, SamplingParams
from edgespec.core.grammar import Grammar
from edgespec.core.logprobs import TokenLogprob
from edgespec.core.modes import Mode
from edgespec.core.stats import GenerationStats
from edgespec.openai_api.cloud import CloudInfo, check_reachable, describe_cloud
from edgespec.openai_api.cloud_errors import as_openai_error
from edgespec.openai_api.detokenizer import IncrementalDetokenizer
from edgespec.openai_api.errors import OpenAIError
from edgespec.openai_api.limits import FALLBACK_LIMITS, PromptLimits, draft_context_tokens, longest_token_chars
from edgespec.openai_api.stops import StopScanner

logger = logging.getLogger(__name__)


class SerializedDraft:
    """A draft runtime behind a lock, so the slot can wait until no draft step is running.

    The edge client calls these from its draft worker thread (and ``reset`` from the event
    loop); the lock never blocks in practice because a slot is only reused once ``wait_idle``
    returned."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self.runtime.reset()

    def draft(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self.runtime.draft(*args, **kwargs)

    def next_token_logits(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self.runtime.next_token_logits(*args, **kwargs)

    def rollback(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self.runtime.rollback(*args, **kwargs)

    def wait_idle(self) -> None:
        with self._lock:
            pass


@dataclass
class Slot:
    client: EdgeClient
    draft: SerializedDraft | None


@dataclass(frozen=True)
class BackendSettings:
    address: str
    mode: Mode
    options: ClientOptions = ClientOptions()
    gamma: int = 4
    adaptive_gamma: bool = False
    max_gamma: int = 8
    default_max_tokens: int = 256
    # OpenAI samples at temperature 1 when a request names none.
    default_temperature: float = 1.0
    model_name: str | None = None  # the id /v1/models reports; default: the target the verifier names


@dataclass(frozen=True)
class SamplingRequest:
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    seed: int | None
    stops: tuple[str, ...]
    top_logprobs: int | None = None  # None: no log-probabilities; else alternatives per token
    grammar: Grammar | None = None  # what the target's output must follow (response_format)


# ------------------------------------------------------------------ events a run hands the handler


@dataclass(frozen=True)
class TextDelta:
    text: str
    # The target's log-probabilities of the tokens whose text this delta first shows (asked for).
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Finished:
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int
    stats: GenerationStats
    logprobs: tuple[TokenLogprob, ...] = ()  # those of tokens no delta showed (EOS, text cut at a stop)


@dataclass(frozen=True)
class Failed:
    error: OpenAIError


Event = TextDelta | Finished | Failed


class StopRequested(ServerError):
    """Raised from ``on_commit`` when a stop string has been found: the edge client treats any
    ServerError with a code it does not retry as final, ends the session (closing the stream,
    so the server frees it) and attaches the committed tokens and stats as ``partial``."""

    def __init__(self) -> None:
        super().__init__("STOP_STRING", "a stop string was generated")


class EdgeBackend:
    def __init__(
        self,
        settings: BackendSettings,
        tokenizer: Any,
        drafts: Sequence[Any | None],
        fallback_eos_ids: frozenset[int] = frozenset(),
    ) -> None:
        if not drafts:
            raise ValueError("the backend needs at least one slot")
        if settings.mode.uses_draft and any(draft is None for draft in drafts):
            raise ValueError(f"mode {settings.mode.value} needs a draft model in every slot")
        self.settings = settings
        self.tokenizer = tokenizer
        self.fallback_eos_ids = fallback_eos_ids
        self.slots = [
            Slot(EdgeClient(settings.address, serialized, settings.options, tokenizer), serialized)
            for serialized in (SerializedDraft(draft) if draft is not None else None for draft in drafts)
        ]
        self.cloud: CloudInfo | None = None
        # The most characters one token stands for: bounds a prompt's tokens before tokenizing it.
        self.longest_token = longest_token_chars(tokenizer)
        # A draft with a hard context window (llama.cpp's) bounds what a request may ask for too.
        self.draft_context = min(
            (bound for draft in drafts if (bound := draft_context_tokens(draft, settings.max_gamma)) is not None),
            default=None,
        )
        # Called with each run as it closes, however it ended (the metrics read it).
        self.on_run_closed: Callable[[RequestRun], None] | None = None
        self._free: asyncio.Queue[Slot] | None = None
        self._probe_lock: asyncio.Lock | None = None
        self._cleanups: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ the verifier

    async def describe_cloud(self) -> CloudInfo:
        """The verifier's target and EOS ids, probed once (again after a failed probe)."""
        if self._probe_lock is None:
            self._probe_lock = asyncio.Lock()
        async with self._probe_lock:
            if self.cloud is None:
                self.cloud = await describe_cloud(
                    self.settings.address, self.settings.options.security, self.settings.options.connect_timeout_s
                )
            return self.cloud

    async def prompt_limits(self) -> PromptLimits:
        """The limits a request must fit: the verifier's (probed once; the defaults in edge-only),
        inside the draft's context window."""
        advertised = FALLBACK_LIMITS if self.settings.mode is Mode.EDGE_ONLY else (await self.describe_cloud()).limits
        return advertised.within_context(self.draft_context)

    async def check_reachable(self) -> None:
        await check_reachable(
            self.settings.address, self.settings.options.security, self.settings.options.connect_timeout_s
        )

    @property
    def model_id(self) -> str | None:
        if self.settings.model_name:
            return self.settings.model_name
        return self.cloud.target if self.cloud is not None and self.cloud.target else None

    @property
    def eos_ids(self) -> frozenset[int]:
        return self.cloud.eos_ids if self.cloud is not None else self.fallback_eos_ids

    @property
    def free_slots(self) -> int:
        return self._free.qsize() if self._free is not None else len(self.slots)

    # ------------------------------------------------------------------ requests

    def config(self, request: SamplingRequest) -> GenerationConfig:
        settings = self.settings
        temperature = settings.default_temperature if request.temperature is None else request.temperature
        if request.top_logprobs is not None and settings.mode is Mode.EDGE_ONLY:
            raise ValueError("logprobs are the target's, and edge-only mode has no target: use a mode with the cloud")
        return GenerationConfig(
            max_new_tokens=request.max_tokens or settings.default_max_tokens,
            gamma=settings.gamma,
            adaptive_gamma=settings.adaptive_gamma,
            max_gamma=settings.max_gamma,
            sampling=SamplingParams(temperature=temperature, top_p=1.0 if request.top_p is None else request.top_p),
            seed=_fresh_seed() if request.seed is None else request.seed,
            eos_ids=self.eos_ids,
            logprobs=request.top_logprobs,
            grammar=request.grammar,
        )

    async def start(self, prompt_ids: list[int], request: SamplingRequest, arrived: float | None = None) -> RequestRun:
        """Start a generation on a free slot (waiting for one). CloudUnavailable if the verifier
        cannot be reached now: a request never starts on the draft alone. ``arrived``: when the
        request came in (time.monotonic()), for its latency."""
        if self.settings.mode is not Mode.EDGE_ONLY:  # edge-only was asked for: no cloud involved
            await self.check_reachable()
            if self.cloud is None:
                try:
                    await self.describe_cloud()  # the EOS set an edge-only fallback must stop on
                except Exception as error:  # reachable, but the probe failed: the run will say why
                    logger.debug("cloud probe failed: %s", error)
        arrived = time.monotonic() if arrived is None else arrived
        return await self._run_on_free_slot(prompt_ids, self.config(request), request.stops, arrived)

    async def _run_on_free_slot(
        self, prompt_ids: list[int], config: GenerationConfig, stops: tuple[str, ...], arrived: float
    ) -> RequestRun:
        if self._free is None:
            self._free = asyncio.Queue()
            for slot in self.slots:
                self._free.put_nowait(slot)
        slot = await self._free.get()
        # No await from here on: the slot is owned by the run, which always gives it back.
        try:
            return RequestRun(self, slot, prompt_ids, config, stops, arrived)
        except BaseException:
            self._free.put_nowait(slot)
            raise

    def release(self, slot: Slot, task: asyncio.Task[Any]) -> None:
        """Give ``slot`` back once ``task`` has ended and its draft worker is idle (in the
        background: a handler being cancelled must not wait for it)."""

        async def wait_then_free() -> None:
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if slot.draft is not None:
                await asyncio.to_thread(slot.draft.wait_idle)
            assert self._free is not None
            self._free.put_nowait(slot)

        cleanup = asyncio.get_running_loop().create_task(wait_then_free())
        self._cleanups.add(cleanup)
        cleanup.add_done_callback(self._cleanups.discard)


def _fresh_seed() -> int:
    import secrets

    return secrets.randbits(63)


class RequestRun:
    """One request's generation: read ``next_event()`` until Finished or Failed; ``close()`` always."""

    def __init__(
        self,
        backend: EdgeBackend,
        slot: Slot,
        prompt_ids: list[int],
        config: GenerationConfig,
        stops: tuple[str, ...],
        arrived: float,
    ) -> None:
        self.backend = backend
        self.arrived = arrived
        self.first_text_at: float | None = None
        self.ended: Finished | Failed | None = None  # how the generation ended, once it has
        self.endpoint = ""  # the API path that asked for it, for the metrics
        self.slot = slot
        self.prompt_tokens = len(prompt_ids)
        self.config = config
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._detokenizer = IncrementalDetokenizer(backend.tokenizer)
        self._scanner = StopScanner(stops)
        self._tokens = 0
        self._stopped_at: int | None = None
        self._closed = False
        self._arrived: deque[TokenLogprob] = deque()  # the next commit's log-probabilities
        self._unshown: list[TokenLogprob] = []  # counted tokens' log-probabilities no delta carried yet
        self.task = asyncio.get_running_loop().create_task(
            slot.client.agenerate(
                prompt_ids,
                backend.settings.mode,
                config,
                on_commit=self._on_commit,
                on_logprobs=self._arrived.extend,
            )
        )
        self.task.add_done_callback(self._on_done)

    async def next_event(self) -> Event:
        return await self._events.get()

    def close(self) -> None:
        """End the generation if it still runs (freeing its cloud session) and free the slot."""
        if not self._closed:
            self._closed = True
            self.backend.release(self.slot, self.task)
            if self.backend.on_run_closed is not None:
                self.backend.on_run_closed(self)

    # ------------------------------------------------------------------ callbacks (event loop)

    def _emit(self, text: str) -> None:
        if text:
            if self.first_text_at is None:
                self.first_text_at = time.monotonic()
            self._events.put_nowait(TextDelta(text, tuple(self._unshown)))
            self._unshown = []

    def _end(self, event: Finished | Failed) -> None:
        self.ended = event
        self._events.put_nowait(event)

    def _on_commit(self, tokens: list[int]) -> None:
        # Token by token, so the count at which a stop string ends the text is exact even when
        # a round commits several tokens.
        for token in tokens:
            self._tokens += 1
            if self._arrived and self._arrived[0].token == token:
                self._unshown.append(self._arrived.popleft())
            result = self._scanner.push(self._detokenizer.push(token))
            self._emit(result.text)
            if result.stopped:
                self._stopped_at = self._tokens
                raise StopRequested()

    def _on_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return  # the handler cancelled it and reads no more events
        error = task.exception()
        if error is None:
            result = task.result()
            tail = self._scanner.push(self._detokenizer.flush())
            self._emit(tail.text)
            if not tail.stopped:
                end = self._scanner.finish()
                self._emit(end.text)
                stopped = end.stopped
            else:
                stopped = True
            tokens = result.tokens
            at_eos = bool(tokens) and tokens[-1] in self.backend.eos_ids
            reason = "length" if not (stopped or at_eos) and len(tokens) >= self.config.max_new_tokens else "stop"
            self._end(Finished(reason, self.prompt_tokens, len(tokens), result.stats, tuple(self._unshown)))
        elif isinstance(error, StopRequested):
            partial = error.partial
            stats = partial.stats if partial is not None else GenerationStats(mode=self.backend.settings.mode.value)
            assert self._stopped_at is not None
            self._end(Finished("stop", self.prompt_tokens, self._stopped_at, stats, tuple(self._unshown)))
        else:
            self._end(Failed(as_openai_error(error, self.backend.settings.address)))
