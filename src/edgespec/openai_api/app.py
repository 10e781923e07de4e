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
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from edgespec.core.grammar import Grammar
from edgespec.core.logprobs import TokenLogprob
from edgespec.core.stats import GenerationStats
from edgespec.openai_api.admission import Admitted, admit_chat, admit_completion, cloud_refused, cloud_unavailable
from edgespec.openai_api.backend import EdgeBackend, Failed, Finished, RequestRun, SamplingRequest, TextDelta
from edgespec.openai_api.body_limit import BodyLimit
from edgespec.openai_api.choices import ChoiceResult, Choices, collect
from edgespec.openai_api.cloud import CloudRefused, CloudUnavailable
from edgespec.openai_api.cloud_health import ReadyProbe
from edgespec.openai_api.errors import OpenAIError, install_error_handlers
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
    Completion,
    CompletionChoice,
    CompletionRequest,
    EdgespecInfo,
    ModelCard,
    ModelList,
    Usage,
)
from edgespec.openai_api.streaming import ChunkFormat, stream_events
from edgespec.openai_api.structured import request_grammar
from edgespec.openai_api.tool_replies import ToolStream, chat_message
from edgespec.openai_api.tools import request_tool_grammar

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


def usage_of(ended: list[Finished]) -> Usage:
    """One prompt, every choice's completion tokens (OpenAI counts n choices so)."""
    prompt, completion = ended[0].prompt_tokens, sum(finished.completion_tokens for finished in ended)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


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
            raise OpenAIError(
                401,
                message + " Send it as 'Authorization: Bearer KEY'.",
                "invalid_request_error",
                None,
                "invalid_api_key",
            )

    return guard


def create_app(
    backend: EdgeBackend,
    api_key: str | None = None,
    limits: RequestLimits = RequestLimits(),
    ready_probe: ReadyProbe = ReadyProbe(),
) -> FastAPI:
    """The ASGI app. ``api_key``: required from every /v1 request when set (/health, /ready and
    /metrics stay open); ``limits``: what one request may cost before it is refused.

    Long because FastAPI's routes are declared as closures over this one app's backend, metrics and
    limits: each route is a few lines, and splitting them out would thread that state through globals.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            info = await backend.describe_cloud()
            logger.info("edge-serve: cloud target %r reachable at %s", info.target, backend.settings.address)
            if backend.settings.mode.uses_exits and not info.exit_layers:
                logger.warning(
                    "edge-serve: mode %s needs exits, and the verifier has none: requests will fail",
                    backend.settings.mode.value,
                )
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
    add_probe_routes(app, backend, metrics, ready_probe)
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
        # Before the prompt is rendered: a template that cannot show tools would drop them silently.
        tools_grammar = await request_tool_grammar(body, backend)
        admitted = await admit_chat(backend, body, limits)
        grammar = tools_grammar if body.calls_tools else await request_grammar(body.response_format, backend)
        tools = ToolStream(body.choices) if body.calls_tools else None  # the answer is read back as calls
        ident, created, model = (
            f"chatcmpl-{secrets.token_hex(12)}",
            int(time.time()),
            backend.model_id or body.model or "edgespec",
        )
        wants_logprobs = body.top_logprobs_wanted is not None

        def logprobs(entries: tuple[TokenLogprob, ...]) -> Any:
            return chat_logprobs(entries, strings) if wants_logprobs and entries else None

        def chunk(
            index: int, delta: ChatDelta, finished: Finished | None = None, entries: tuple[TokenLogprob, ...] = ()
        ) -> ChatCompletionChunk:
            return ChatCompletionChunk(
                id=ident,
                created=created,
                model=model,
                choices=[
                    ChatChunkChoice(
                        index=index,
                        delta=delta,
                        finish_reason=reason(index, finished) if finished else None,
                        logprobs=logprobs(entries),
                    )
                ],
                edgespec=edgespec_info(finished.stats) if finished else None,
            )

        def reason(index: int, finished: Finished) -> str:
            return tools.finish_reason(index, finished.finish_reason) if tools else finished.finish_reason

        def text_chunk(index: int, delta: TextDelta) -> ChatCompletionChunk | None:
            if tools is None:
                return chunk(index, ChatDelta(content=delta.text), entries=delta.logprobs)
            shown = tools.text(index, delta.text, delta.logprobs)
            return chunk(index, shown[0], entries=shown[1]) if shown else None

        def final_chunk(index: int, finished: Finished) -> ChatCompletionChunk:
            delta, entries = tools.final(index, finished.logprobs) if tools else (ChatDelta(), finished.logprobs)
            return chunk(index, delta, finished, entries)

        chunks = ChunkFormat(
            opening=lambda index: chunk(index, ChatDelta(role="assistant", content="")),
            text=text_chunk,
            final=final_chunk,
            usage=lambda ended: ChatCompletionChunk(
                id=ident, created=created, model=model, choices=[], usage=usage_of(ended)
            ),
        )

        def whole(results: list[ChoiceResult]) -> ChatCompletion:
            return ChatCompletion(
                id=ident,
                created=created,
                model=model,
                choices=[
                    ChatChoice(
                        index=index,
                        message=out,
                        finish_reason=reason,
                        logprobs=chat_logprobs(entries, strings) if wants_logprobs else None,
                    )
                    for index, (text, finished, entries) in enumerate(results)
                    for out, reason in [chat_message(text, finished.finish_reason, body.calls_tools)]
                ],
                usage=usage_of([finished for _, finished, _ in results]),
                edgespec=edgespec_info(results[0][1].stats),
            )

        return await serve_request(request, body, admitted, arrived, chunks, whole, grammar)

    @api.post("/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        arrived = time.monotonic()
        admitted = await admit_completion(backend, body, limits)
        ident, created, model = (
            f"cmpl-{secrets.token_hex(12)}",
            int(time.time()),
            backend.model_id or body.model or "edgespec",
        )
        wants_logprobs = body.top_logprobs_wanted is not None
        shown: dict[int, int] = {}  # per choice: characters its earlier chunks carried (logprobs' offsets)

        def chunk(
            index: int, text: str, finished: Finished | None = None, entries: tuple[TokenLogprob, ...] = ()
        ) -> Completion:
            offset = shown.get(index, 0)
            shown[index] = offset + len(text)
            choice = CompletionChoice(
                index=index,
                text=text,
                finish_reason=finished.finish_reason if finished else None,
                logprobs=completion_logprobs(entries, strings, offset) if wants_logprobs and entries else None,
            )
            return Completion(
                id=ident,
                created=created,
                model=model,
                choices=[choice],
                edgespec=edgespec_info(finished.stats) if finished else None,
            )

        chunks = ChunkFormat(
            opening=lambda index: None,
            text=lambda index, delta: chunk(index, delta.text, entries=delta.logprobs),
            final=lambda index, finished: chunk(index, "", finished, finished.logprobs),
            usage=lambda ended: Completion(id=ident, created=created, model=model, choices=[], usage=usage_of(ended)),
        )

        def whole(results: list[ChoiceResult]) -> Completion:
            return Completion(
                id=ident,
                created=created,
                model=model,
                choices=[
                    CompletionChoice(
                        index=index,
                        text=text,
                        finish_reason=finished.finish_reason,
                        logprobs=completion_logprobs(entries, strings) if wants_logprobs else None,
                    )
                    for index, (text, finished, entries) in enumerate(results)
                ],
                usage=usage_of([finished for _, finished, _ in results]),
                edgespec=edgespec_info(results[0][1].stats),
            )

        return await serve_request(request, body, admitted, arrived, chunks, whole)

    async def serve_request(
        request: Request,
        body: Any,
        admitted: Admitted,
        arrived: float,
        chunks: ChunkFormat,
        whole: Callable[[list[ChoiceResult]], BaseModel],
        grammar: Grammar | None = None,
    ) -> Response:
        sampling = SamplingRequest(
            max_tokens=admitted.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.wire_seed,
            stops=body.stops,
            top_logprobs=body.top_logprobs_wanted,
            grammar=grammar,
        )
        choices = Choices(backend, admitted.prompt_ids, sampling, body.choices, arrived, request.url.path)
        handed_over = False  # to the stream, which closes them when it ends
        try:
            # Every choice's first event before answering, so a refusal at the start (the
            # verifier's limits, its token, an unreachable cloud) is an HTTP error even for a stream.
            first = await until_disconnected(request, choices.opening())
            if body.stream:
                streaming = StreamingResponse(
                    stream_events(first, choices, chunks, body.include_usage_chunk),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                )
                handed_over = True
                return streaming
            results = await until_disconnected(request, collect(first, choices))
            return JSONResponse(whole(results).model_dump())
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        finally:
            if not handed_over:
                choices.close()

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
            endpoint,
            run.prompt_tokens,
            ended.completion_tokens,
            ended.finish_reason,
            seconds,
            ended.stats.rounds,
        )
    else:
        reason = "error" if isinstance(ended, Failed) else "cancelled"
        metrics.ended_early(reason)
        detail = ended.error.message if isinstance(ended, Failed) else "the client left or the request was cancelled"
        logger.info("%s: generation ended early (%s) after %.2f s: %s", endpoint, reason, seconds, detail)
