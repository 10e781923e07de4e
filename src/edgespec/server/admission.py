"""Who gets a session and for how long: the checks an ``open`` must pass before the server spends
anything on it (room for one more session, the protocol version, a kind it serves, cloud-sd's
limits, the request's own bounds), the prompt it asks for, whether that generation fits the
limits and the model, and the clock that ends a session that went quiet or lived too long. Kept
out of the handlers so each rule reads, and is tested, alone."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

from edgespec.models.target import TargetRuntime
from edgespec.prompting import render_prompt
from edgespec.server.limits import AdmissionLimits, SessionLimits
from edgespec.server.refusals import Refused
from edgespec.transport import edgespec_pb2 as pb
from edgespec.transport.codec import PROTOCOL_VERSION, ProtocolError
from edgespec.transport.validation import check_open

SERVED_KINDS = (pb.CLOUD_AR, pb.SPECULATIVE, pb.CLOUD_SD)


def check_admission(
    request: pb.Open,
    open_sessions: int,
    admission: AdmissionLimits,
    limits: SessionLimits,
    has_cloud_draft: bool,
    draining: bool = False,
) -> None:
    """Raise the ``ProtocolError`` that refuses ``request``, or return: the server is not shutting
    down, has room, speaks its version, serves its kind (cloud-sd only with a draft of its own),
    and its bounds hold."""
    if draining:
        # BUSY, the code a client retries: through a load balancer the retry lands on another replica.
        raise ProtocolError(pb.BUSY, "the server is shutting down and takes no new sessions; retry elsewhere")
    if open_sessions >= admission.max_sessions:
        raise ProtocolError(
            pb.BUSY, f"the server is at its limit of {admission.max_sessions} open sessions; retry later"
        )
    if request.protocol_version != PROTOCOL_VERSION:
        raise ProtocolError(
            pb.UNSUPPORTED_VERSION,
            f"protocol version {request.protocol_version} is not supported; this server speaks {PROTOCOL_VERSION}",
        )
    if request.kind not in SERVED_KINDS:
        raise ProtocolError(pb.BAD_REQUEST, "open.kind must be CLOUD_AR, SPECULATIVE or CLOUD_SD")
    if request.kind == pb.CLOUD_SD:
        if not has_cloud_draft:
            raise ProtocolError(
                pb.BAD_REQUEST, "cloud-sd needs a draft model on the server: this one was started without --cloud-draft"
            )
        if not request.gamma <= limits.max_block or not request.max_gamma <= limits.max_block:
            raise ProtocolError(pb.TOO_LARGE, f"cloud-sd gamma and max_gamma must be <= {limits.max_block}")
    check_open(request, limits.max_new_tokens)


def requested_prompt(request: pb.Open, tokenizer: object) -> list[int]:
    """The prompt's token ids: sent as ids, or as chat messages the server renders with the
    target's template (never both)."""
    prompt_ids = list(request.prompt_ids)
    if request.messages:
        if prompt_ids:
            raise ProtocolError(pb.BAD_REQUEST, "send prompt_ids or messages, not both")
        try:
            return render_prompt(tokenizer, [{"role": m.role, "content": m.content} for m in request.messages])
        except Exception as error:
            raise ProtocolError(pb.BAD_REQUEST, f"cannot render the chat messages: {error}") from None
    return prompt_ids


def check_generation_fits(
    runtime: TargetRuntime,
    prompt_ids: Sequence[int],
    committed_ids: Sequence[int],
    max_new_tokens: int,
    limits: SessionLimits,
) -> None:
    """Raise the ``Refused`` that turns a session away before it takes a cache: an empty or
    oversize prompt, a token budget outside the limits or the model's context, an id outside the
    vocabulary."""
    vocab = runtime.vocab_size
    if not prompt_ids:
        raise Refused("BAD_REQUEST", "the prompt is empty")
    if len(prompt_ids) > limits.max_prompt_tokens:
        raise Refused(
            "TOO_LARGE", f"prompt of {len(prompt_ids)} tokens exceeds the limit of {limits.max_prompt_tokens}"
        )
    if max_new_tokens < 1:
        raise Refused("BAD_REQUEST", f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if max_new_tokens > limits.max_new_tokens:
        raise Refused(
            "TOO_LARGE", f"max_new_tokens {max_new_tokens} exceeds this server's limit of {limits.max_new_tokens}"
        )
    try:
        runtime.check_fits(len(prompt_ids), max_new_tokens)
    except ValueError as error:
        raise Refused("TOO_LARGE", str(error)) from None
    for token in (*prompt_ids, *committed_ids):
        if token >= vocab:
            raise Refused("OUT_OF_VOCABULARY", f"token id {token} is outside the vocabulary (size {vocab})")


@dataclass(frozen=True)
class SessionClock:
    """A session's time limits from the moment its stream opened: how long to wait for the next
    message, and the error that ends it when it went quiet or reached its lifetime."""

    limits: SessionLimits
    opened_at: float = field(default_factory=time.monotonic)

    def read_timeout(self) -> float:
        """Seconds to wait for the client's next message: its idle timeout, or less when its
        lifetime ends sooner."""
        lifetime_left = self.limits.max_lifetime_s - (time.monotonic() - self.opened_at)
        return max(0.0, min(self.limits.idle_timeout_s, lifetime_left))

    def expired(self) -> ProtocolError:
        """The error that ends a session whose read timed out: past its lifetime, or idle."""
        if self.lived_out():
            return ProtocolError(
                pb.EXPIRED, f"the session reached its maximum lifetime of {self.limits.max_lifetime_s:g} s"
            )
        return ProtocolError(
            pb.EXPIRED, f"no message for {self.limits.idle_timeout_s:g} s: the session was ended to free its memory"
        )

    def lived_out(self) -> bool:
        return time.monotonic() - self.opened_at >= self.limits.max_lifetime_s

    def check_alive(self) -> None:
        """For the loops that stream without reading (cloud-ar, cloud-sd): end the session at its
        lifetime."""
        if self.lived_out():
            raise self.expired()
