"""The ``n`` choices of one request: n generations, each a run of its own (a slot, a cloud
session, a seed), their events merged in the order they happen and tagged with their choice.

Each choice is pumped by a task of its own that reads its run to the end and closes it at once,
so a finished choice gives its slot back while the others still generate: n may exceed the slots
(later choices wait for one) without two requests ever holding slots the other waits for.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace

from edgespec.core.logprobs import TokenLogprob
from edgespec.openai_api.admission import cloud_unavailable
from edgespec.openai_api.backend import EdgeBackend, Event, Failed, Finished, SamplingRequest, TextDelta
from edgespec.openai_api.cloud import CloudUnavailable
from edgespec.openai_api.errors import OpenAIError, bad_request
from edgespec.openai_api.schemas import SEED_MODULUS

logger = logging.getLogger(__name__)

# Choice i's seed is the request's plus i strides (mod 2^64): odd, so the n seeds all differ, and
# far apart, so neighbouring choices share no positions' uniforms.
SEED_STRIDE = 0x9E3779B97F4A7C15


@dataclass(frozen=True)
class ChoiceEvent:
    index: int
    event: Event


def choice_seeds(seed: int | None, n: int) -> list[int | None]:
    """Choice 0 keeps the request's seed (so n = 1 is the plain request); without a seed every
    choice draws a fresh one."""
    if seed is None:
        return [None] * n
    return [(seed + index * SEED_STRIDE) % SEED_MODULUS for index in range(n)]


class Choices:
    """Start with ``opening()``; then read ``next_event()`` until every choice has finished or one
    failed; ``close()`` always (it ends every choice still running)."""

    def __init__(
        self,
        backend: EdgeBackend,
        prompt_ids: list[int],
        sampling: SamplingRequest,
        n: int,
        arrived: float,
        endpoint: str,
    ) -> None:
        self.n = n
        self._backend = backend
        self._prompt_ids = prompt_ids
        self._arrived = arrived
        self._endpoint = endpoint
        self._events: asyncio.Queue[ChoiceEvent] = asyncio.Queue()
        seeds = choice_seeds(sampling.seed, n)
        self._pumps = [
            asyncio.ensure_future(self._pump(index, replace(sampling, seed=seed))) for index, seed in enumerate(seeds)
        ]

    async def opening(self) -> list[ChoiceEvent]:
        """Every choice's first event (in arrival order), so a refusal at the start (the verifier's
        limits, its token, an unreachable cloud) is an HTTP error even for a stream."""
        first: list[ChoiceEvent] = []
        started: set[int] = set()
        while len(started) < self.n:
            tagged = await self._events.get()
            if isinstance(tagged.event, Failed):
                raise tagged.event.error
            first.append(tagged)
            started.add(tagged.index)
        return first

    async def next_event(self) -> ChoiceEvent:
        return await self._events.get()

    def close(self) -> None:
        for pump in self._pumps:
            pump.cancel()

    async def _pump(self, index: int, sampling: SamplingRequest) -> None:
        try:
            run = await self._backend.start(self._prompt_ids, sampling, self._arrived)
        except CloudUnavailable as error:
            self._events.put_nowait(ChoiceEvent(index, Failed(cloud_unavailable(error))))
            return
        except ValueError as error:  # a sampling setting the config refuses
            self._events.put_nowait(ChoiceEvent(index, Failed(bad_request(str(error)))))
            return
        except Exception as error:  # a bug must answer this request, never leave it waiting
            logger.exception("choice %d could not start", index)
            failure = OpenAIError(500, f"internal error: {error}", "server_error")
            self._events.put_nowait(ChoiceEvent(index, Failed(failure)))
            return
        run.endpoint = self._endpoint
        try:
            while True:
                event = await run.next_event()
                self._events.put_nowait(ChoiceEvent(index, event))
                if not isinstance(event, TextDelta):
                    return
        finally:
            run.close()


# One choice's whole answer: its text, how it ended, and its tokens' log-probabilities (when asked).
ChoiceResult = tuple[str, Finished, tuple[TokenLogprob, ...]]


async def collect(first: list[ChoiceEvent], choices: Choices) -> list[ChoiceResult]:
    """Every choice's whole answer, in choice order."""
    parts: list[list[str]] = [[] for _ in range(choices.n)]
    entries: list[list[TokenLogprob]] = [[] for _ in range(choices.n)]
    finished: dict[int, Finished] = {}
    pending = list(reversed(first))
    while len(finished) < choices.n:
        tagged = pending.pop() if pending else await choices.next_event()
        event, index = tagged.event, tagged.index
        if isinstance(event, TextDelta):
            parts[index].append(event.text)
            entries[index].extend(event.logprobs)
        elif isinstance(event, Finished):
            finished[index] = event
            entries[index].extend(event.logprobs)
        elif isinstance(event, Failed):
            raise event.error
    return [("".join(parts[index]), finished[index], tuple(entries[index])) for index in range(choices.n)]
