"""Server-sent events in OpenAI's chunk format: ``data: {json}`` per chunk, ``data: [DONE]`` last."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Callable

from pydantic import BaseModel

from edgespec.openai_api.backend import Event, Failed, Finished, RequestRun, TextDelta

DONE = "data: [DONE]\n\n"


def sse(payload: BaseModel | dict[str, Any]) -> str:
    data = chunk_fields(payload) if isinstance(payload, BaseModel) else payload
    return f"data: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n"


def chunk_fields(chunk: BaseModel) -> dict[str, Any]:
    """A chunk as OpenAI spells it: unset fields left out (the last delta is ``{}``), except
    each choice's ``finish_reason`` and ``logprobs``, which are always present."""
    data = chunk.model_dump(exclude_none=True)
    for choice in data.get("choices", []):
        choice.setdefault("finish_reason", None)
        choice.setdefault("logprobs", None)
    return data


class ChunkFormat:
    """How one endpoint spells its chunks (chat deltas or completion text)."""

    def __init__(
        self,
        opening: Callable[[], BaseModel | None],
        text: Callable[[TextDelta], BaseModel],
        final: Callable[[Finished], BaseModel],
        usage: Callable[[Finished], BaseModel],
    ) -> None:
        self.opening = opening
        self.text = text
        self.final = final
        self.usage = usage


async def stream_events(first: Event, run: RequestRun, chunks: ChunkFormat, include_usage: bool) -> AsyncIterator[str]:
    """The SSE body. ``run.close()`` runs however the stream ends: a client that disconnects
    cancels this generator, which ends the generation and frees its cloud session."""
    try:
        opening = chunks.opening()
        if opening is not None:
            yield sse(opening)
        event = first
        while True:
            if isinstance(event, TextDelta):
                yield sse(chunks.text(event))
            elif isinstance(event, Finished):
                yield sse(chunks.final(event))
                if include_usage:
                    yield sse(chunks.usage(event))
                yield DONE
                return
            else:
                assert isinstance(event, Failed)
                # OpenAI's clients raise an APIError for a chunk that carries "error".
                yield sse(event.error.body())
                return
            event = await run.next_event()
    finally:
        run.close()
