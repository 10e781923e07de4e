"""The FastAPI app: OpenAI's chat and completion endpoints over an ``EdgeBackend``.

Around the routes: ``BodyLimit`` bounds each body before it is parsed, ``admission`` checks a
prompt against the verifier's limits before it takes a slot, every error is OpenAI-shaped
(``errors``), and ``probes`` answers /health, /ready and /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
from typing import Any, AsyncIterator, Awaitable, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from edgespec.core.logprobs import TokenLogprob
from edgespec.core.stats import GenerationStats
from edgespec.openai_api.admission import Admitted, admit_chat, admit_completion, cloud_refused, cloud_unavailable
from edgespec.openai_api.backend import EdgeBackend, Event, Failed, Finished, RequestRun, SamplingRequest, TextDelta
from edgespec.openai_api.body_limit import BodyLimit
from edgespec.openai_api.cloud import CloudRefused, CloudUnavailable
from edgespec.openai_api.errors import OpenAIError, bad_request, install_error_handlers
from edgespec.openai_api.limits import RequestLimits
from edgespec.openai_api.logprobs import TokenStrings, chat_logprobs, completion_logprobs
from edgespec.openai_api.metrics import CLIENT_CLOSED_REQUEST, CountResponses, EdgeMetrics
from edgespec.openai_api.probes import add_probe_routes
from edgespec.openai_api.schemas import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatMessageOut,
    Completion,
    CompletionChoice,
    CompletionRequest,
    EdgespecInfo,
    ModelCard,
    ModelList,
    Usage,
)
from edgespec.openai_api.streaming import ChunkFormat, stream_events

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ClientGone(Exception):
    """The HTTP client disconnected while the request was being served."""


def edgespec_info(stats: GenerationStats) -> EdgespecInfo:
    return EdgespecInfo(
        mode=stats.mode,
        rounds=stats.rounds,
        tokens_per_round=round(stats.tokens_per_round, 4),
        hit_rate=round(stats.hit_rate, 4),
        acceptance_rate=round(stats.acceptance_rate, 4),
        lossless=stats.lossless,
        fallback_tokens=stats.fallback_tokens,
        fallback_spans=[(int(start), int(end)) for start, end in stats.fallback_spans],
        connection_losses=stats.connection_losses,
        reconnects=stats.reconnects,
    )


def usage_of(finished: Finished) -> Usage:
    return Usage(
        prompt_tokens=finished.prompt_tokens,
        completion_tokens=finished.completion_tokens,
        total_tokens=finished.prompt_tokens + finished.completion_tokens,
    )


async def _wait_for_disconnect(request: Request) -> None:
    # The body has been read, so the next ASGI message is the disconnect (if it ever comes).
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise ClientGone."""
    job = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({job, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not job.done():
            job.cancel()
    if job.cancelled():
        raise ClientGone()
    return job.result()


def check_api_key(api_key: str | None):  # type: ignore[no-untyped-def]
    """A dependency: requests must carry ``Authorization: Bearer <api_key>`` when one is set."""

    async def guard(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            message = "You didn't provide an API key." if not header else "Incorrect API key provided."
            raise OpenAIError(401, message + " Send it as 'Authorization: Bearer KEY'.", "invalid_request_error", None, "invalid_api_key")

    return guard


def create_app(backend: EdgeBackend, api_key: str | None = None, limits: RequestLimits = RequestLimits()) -> FastAPI:
    """The ASGI app. ``api_key``: required from every /v1 request when set (/health, /ready and
    /metrics stay open); ``limits``: what one request may cost before it is refused."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            info = await backend.describe_cloud()
            logger.info("edge-serve: cloud target %r reachable at %s", info.target, backend.settings.address)
            if backend.settings.mode.uses_exits and not info.exit_layers:
                logger.warning("edge-serve: mode %s needs exits, and the verifier has none: requests will fail", backend.settings.mode.value)
        except (CloudUnavailable, CloudRefused) as error:
            # Serve anyway: requests get a 503 until the verifier answers.
            logger.warning("edge-serve: %s", error)
        yield

    app = FastAPI(title="edgespec edge-serve", lifespan=lifespan)
    metrics = EdgeMetrics(len(backend.slots), lambda: backend.free_slots)
    backend.on_run_closed = lambda run: record_run(metrics, run)

    def refused(error: OpenAIError) -> None:
        metrics.refused(error)
        log = logger.warning if error.status >= 500 else logger.info
        log("answered %d %s: %s", error.status, error.code or error.type, error.message)

    install_error_handlers(app, refused)
    # The outermost middleware is added last: every response is counted, the body limit's too.
    app.add_middleware(BodyLimit, limits=limits, on_refusal=refused)
    app.add_middleware(CountResponses, metrics=metrics)
    add_probe_routes(app, backend, metrics)
    strings = TokenStrings(backend.tokenizer)
    api = APIRouter(prefix="/v1", dependencies=[Depends(check_api_key(api_key))])

    @api.get("/models")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=await model_id(), created=int(time.time()))])

    async def model_id() -> str:
        if backend.model_id is None:
            try:
                await backend.describe_cloud()
            except CloudUnavailable as error:
                raise cloud_unavailable(error) from None
            except CloudRefused as error:
                raise cloud_refused(error) from None
        return backend.model_id or "edgespec"

    @api.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        arrived = time.monotonic()
        admitted = await admit_chat(backend, body, limits)
        ident, created, model = f"chatcmpl-{secrets.token_hex(12)}", int(time.time()), backend.model_id or body.model or "edgespec"

        wants_logprobs = body.top_logprobs_wanted is not None

        def logprobs(entries: tuple[TokenLogprob, ...]) -> Any:
            return chat_logprobs(entries, strings) if wants_logprobs and entries else None

        def chunk(
            delta: ChatDelta, finished: Finished | None = None, entries: tuple[TokenLogprob, ...] = ()
        ) -> ChatCompletionChunk:
            return ChatCompletionChunk(
                id=ident, created=created, model=model,
                choices=[ChatChunkChoice(
                    delta=delta, finish_reason=finished.finish_reason if finished else None, logprobs=logprobs(entries),
                )],
                edgespec=edgespec_info(finished.stats) if finished else None,
            )

        chunks = ChunkFormat(
            opening=lambda: chunk(ChatDelta(role="assistant", content="")),
            text=lambda delta: chunk(ChatDelta(content=delta.text), entries=delta.logprobs),
            final=lambda finished: chunk(ChatDelta(), finished, finished.logprobs),
            usage=lambda finished: ChatCompletionChunk(id=ident, created=created, model=model, choices=[], usage=usage_of(finished)),
        )

        def whole(text: str, finished: Finished, entries: tuple[TokenLogprob, ...]) -> ChatCompletion:
            choice_logprobs = chat_logprobs(entries, strings) if wants_logprobs else None
            return ChatCompletion(
                id=ident, created=created, model=model,
                choices=[ChatChoice(
                    message=ChatMessageOut(content=text), finish_reason=finished.finish_reason, logprobs=choice_logprobs,
                )],
                usage=usage_of(finished), edgespec=edgespec_info(finished.stats),
            )

        return await serve_request(request, body, admitted, arrived, chunks, whole)

    @api.post("/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        arrived = time.monotonic()
        admitted = await admit_completion(backend, body, limits)
        ident, created, model = f"cmpl-{secrets.token_hex(12)}", int(time.time()), backend.model_id or body.model or "edgespec"

        wants_logprobs = body.top_logprobs_wanted is not None
        shown = 0  # characters of text the stream's earlier chunks carried (their logprobs' offsets)

        def logprobs(entries: tuple[TokenLogprob, ...]) -> Any:
            return completion_logprobs(entries, strings, shown) if wants_logprobs and entries else None

        def chunk(text: str, finished: Finished | None = None, entries: tuple[TokenLogprob, ...] = ()) -> Completion:
            nonlocal shown
            choice = CompletionChoice(
                text=text, finish_reason=finished.finish_reason if finished else None, logprobs=logprobs(entries),
            )
            shown += len(text)
            return Completion(
                id=ident, created=created, model=model, choices=[choice],
                edgespec=edgespec_info(finished.stats) if finished else None,
            )

        chunks = ChunkFormat(
            opening=lambda: None,
            text=lambda delta: chunk(delta.text, entries=delta.logprobs),
            final=lambda finished: chunk("", finished, finished.logprobs),
            usage=lambda finished: Completion(id=ident, created=created, model=model, choices=[], usage=usage_of(finished)),
        )

        def whole(text: str, finished: Finished, entries: tuple[TokenLogprob, ...]) -> Completion:
            choice_logprobs = completion_logprobs(entries, strings) if wants_logprobs else None
            return Completion(
                id=ident, created=created, model=model,
                choices=[CompletionChoice(text=text, finish_reason=finished.finish_reason, logprobs=choice_logprobs)],
                usage=usage_of(finished), edgespec=edgespec_info(finished.stats),
            )

        return await serve_request(request, body, admitted, arrived, chunks, whole)

    async def serve_request(
        request: Request, body: Any, admitted: Admitted, arrived: float, chunks: ChunkFormat, whole: Any
    ) -> Response:
        sampling = SamplingRequest(
            max_tokens=admitted.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.wire_seed,
            stops=body.stops,
            top_logprobs=body.top_logprobs_wanted,
        )
        try:
            run = await until_disconnected(request, backend.start(admitted.prompt_ids, sampling, arrived))
            run.endpoint = request.url.path
        except CloudUnavailable as error:
            raise cloud_unavailable(error) from None
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        except ValueError as error:  # a sampling setting the config refuses
            raise bad_request(str(error)) from None
        try:
            # Wait for the first event before answering, so a refusal at the start (the
            # verifier's limits, its token) is an HTTP error even for a stream.
            first = await until_disconnected(request, run.next_event())
            if isinstance(first, Failed):
                raise first.error
            if body.stream:
                streaming = StreamingResponse(
                    stream_events(first, run, chunks, body.include_usage_chunk),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                )
                run = None  # the stream owns it now and closes it
                return streaming
            text, finished, entries = await until_disconnected(request, collect(first, run))
            return JSONResponse(whole(text, finished, entries).model_dump())
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        finally:
            if run is not None:
                run.close()

    app.include_router(api)
    return app


def record_run(metrics: EdgeMetrics, run: RequestRun) -> None:
    """A closed run's tokens, rounds and timings into the metrics."""
    endpoint = run.endpoint
    metrics.started(run.prompt_tokens)
    if run.first_text_at is not None:
        metrics.first_text(endpoint, run.first_text_at - run.arrived)
    ended = run.ended
    seconds = time.monotonic() - run.arrived
    if isinstance(ended, Finished):
        metrics.finished(endpoint, run.arrived, ended.finish_reason, ended.completion_tokens, ended.stats)
        logger.info(
            "%s: %d prompt tokens, %d generated (%s) in %.2f s, %d rounds",
            endpoint, run.prompt_tokens, ended.completion_tokens, ended.finish_reason, seconds, ended.stats.rounds,
        )
    else:
        reason = "error" if isinstance(ended, Failed) else "cancelled"
        metrics.ended_early(reason)
        detail = ended.error.message if isinstance(ended, Failed) else "the client left or the request was cancelled"
        logger.info("%s: generation ended early (%s) after %.2f s: %s", endpoint, reason, seconds, detail)


async def collect(first: Event, run: RequestRun) -> tuple[str, Finished, tuple[TokenLogprob, ...]]:
    """The whole text, how it ended, and every token's log-probabilities (when asked for)."""
    parts: list[str] = []
    entries: list[TokenLogprob] = []
    event = first
    while True:
        if isinstance(event, TextDelta):
            parts.append(event.text)
            entries.extend(event.logprobs)
        elif isinstance(event, Finished):
            return "".join(parts), event, (*entries, *event.logprobs)
        elif isinstance(event, Failed):
            raise event.error
        event = await run.next_event()
