"""Server-sent events in OpenAI's chunk format: ``data: {json}`` per chunk, ``data: [DONE]`` last."""

from __future__ import annotations

import json
from collections import deque
from typing import Any, AsyncIterator, Callable

from pydantic import BaseModel

from edgespec.openai_api.backend import Failed, Finished, TextDelta
from edgespec.openai_api.choices import ChoiceEvent, Choices

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
    """How one endpoint spells its chunks (chat deltas or completion text), per choice index."""

    def __init__(
        self,
        opening: Callable[[int], BaseModel | None],
        text: Callable[[int, TextDelta], BaseModel | None],
        final: Callable[[int, Finished], BaseModel],
        usage: Callable[[list[Finished]], BaseModel],
    ) -> None:
        self.opening = opening
        self.text = text
        self.final = final
        self.usage = usage


async def stream_events(
    first: list[ChoiceEvent], choices: Choices, chunks: ChunkFormat, include_usage: bool
) -> AsyncIterator[str]:
    """The SSE body: each choice's opening, then every choice's chunks as they happen, usage and
    [DONE] once all have finished. ``choices.close()`` runs however the stream ends: a client that
    disconnects cancels this generator, which ends the generations and frees their cloud sessions."""
    try:
        for index in range(choices.n):
            opening = chunks.opening(index)
            if opening is not None:
                yield sse(opening)
        pending = deque(first)
        finished: dict[int, Finished] = {}
        while len(finished) < choices.n:
            tagged = pending.popleft() if pending else await choices.next_event()
            event = tagged.event
            if isinstance(event, TextDelta):
                shown = chunks.text(tagged.index, event)
                if shown is not None:  # None: nothing to show yet (text held back)
                    yield sse(shown)
            elif isinstance(event, Finished):
                yield sse(chunks.final(tagged.index, event))
                finished[tagged.index] = event
            else:
                assert isinstance(event, Failed)
                # OpenAI's clients raise an APIError for a chunk that carries "error".
                yield sse(event.error.body())
                return
        if include_usage:
            yield sse(chunks.usage([finished[index] for index in range(choices.n)]))
        yield DONE
    finally:
        choices.close()
