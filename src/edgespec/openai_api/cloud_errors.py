"""What the caller hears when the cloud verifier refuses or fails a generation.

The status says whose fault it is: 400 for a request over the verifier's limits (its message
names the limit), 429 when the verifier is full and a retry later may pass, 503 when the cloud
cannot serve at all (unreachable, or refusing the edge itself: its token, its protocol).
"""

from __future__ import annotations

import logging

from edgespec.client.edge_client import ConnectionLost, ServerError
from edgespec.openai_api.errors import OpenAIError

logger = logging.getLogger(__name__)

# Verifier refusals that are the request's fault (a prompt or max_tokens over its limits), and
# gRPC statuses that say the same about the message that carried it.
REQUEST_ERROR_CODES = frozenset({"TOO_LARGE", "BAD_REQUEST", "OUT_OF_VOCABULARY", "INVALID_ARGUMENT", "OUT_OF_RANGE"})
# Admission control: the verifier has no room now.
BUSY_CODES = frozenset({"BUSY"})
# gRPC's refusal of a message over the server's size limit.
MESSAGE_TOO_LARGE = "RESOURCE_EXHAUSTED"


def as_openai_error(error: BaseException, address: str) -> OpenAIError:
    if isinstance(error, ServerError):
        if error.code in REQUEST_ERROR_CODES:
            return OpenAIError(
                400, f"the verifier refused the request: {error}", "invalid_request_error", None, error.code.lower()
            )
        if error.code == MESSAGE_TOO_LARGE:
            return OpenAIError(
                400,
                f"the request is over the verifier's message size limit: {error}",
                "invalid_request_error",
                None,
                "request_too_large",
            )
        if error.code in BUSY_CODES:
            return OpenAIError(
                429,
                f"the cloud verifier at {address} is at its session limit; retry later: {error}",
                "server_error",
                None,
                "cloud_busy",
            )
        logger.warning("the cloud verifier at %s refused a generation: %s", address, error)
        return OpenAIError(
            503, f"the cloud verifier at {address} refused: {error}", "server_error", None, "cloud_refused"
        )
    if isinstance(error, ConnectionLost):
        partial = len(error.partial.tokens) if error.partial is not None else 0
        return OpenAIError(
            503,
            f"lost the cloud verifier after {partial} tokens and fallback is off: {error}",
            "server_error",
            None,
            "cloud_unreachable",
        )
    logger.error("generation failed", exc_info=error)
    return OpenAIError(500, "internal error: the generation failed", "server_error", None, "internal_error")
