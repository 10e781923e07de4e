"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with a status.

Every error edge-serve answers has this shape, an unexpected exception included (a 500 that
names no detail, logged here), so a client's error handling never meets a plain-text body.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class OpenAIError(Exception):
    """An error the API reports to the caller as OpenAI does."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        # A message may quote what the caller sent; a lone surrogate in it could not be encoded.
        self.message = printable(message)
        self.type = type
        self.param = None if param is None else printable(param)
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def printable(text: str) -> str:
    """``text`` with anything UTF-8 cannot encode (lone surrogates) spelled as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, "invalid_request_error", param, code)


def unsupported(name: str, what: str) -> ValueError:
    """A validator's refusal of a parameter edgespec does not implement (answered as ``unsupported_parameter``)."""
    return ValueError(f"unsupported: {name} {what} is not supported by edgespec")


class InvalidText(ValueError):
    """A request string that is not valid Unicode; ``path`` names it (``messages.0.content``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


# Pydantic names the member of a union it tried (``str``, ``list[TextPart]``) in an error's location;
# the caller knows only the parameter.
_UNION_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _param(location: Any) -> str | None:
    parts = [str(part) for part in location if part != "body"]
    parts = [part for part in parts if part not in _UNION_TAGS and "[" not in part and "(" not in part]
    return ".".join(parts) or None


def validation_error(error: RequestValidationError) -> OpenAIError:
    """The most telling problem pydantic found, named by its parameter (``messages.0.content``)."""
    errors = list(error.errors())
    if not errors:
        return bad_request("invalid request")
    if any(e.get("type") == "json_invalid" for e in errors):
        return bad_request("the request body is not valid JSON")
    # Our own validators' refusals say more than a union's "not a string" for its other member.
    first = next((e for e in errors if e.get("type") == "value_error"), errors[0])
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, InvalidText):
        return bad_request(str(cause), cause.path, "invalid_value")
    param = _param(first.get("loc", ()))
    if first.get("type") == "extra_forbidden":
        return bad_request(f"Unrecognized request argument supplied: {param}", param, "unsupported_parameter")
    # Validators raise ValueError("..."): pydantic prefixes "Value error, ".
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    code = "unsupported_parameter" if message.startswith("unsupported:") else "invalid_value" if param else None
    message = message.removeprefix("unsupported:").strip()
    return bad_request(f"{param}: {message}" if param else message, param, code)


def install_error_handlers(app: Any, on_refusal: Callable[[OpenAIError], None] = lambda error: None) -> None:
    """OpenAI-shaped answers for every error; ``on_refusal`` sees each one (the metrics count them)."""

    def answer(error: OpenAIError) -> JSONResponse:
        on_refusal(error)
        return error.response()

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, error: OpenAIError) -> JSONResponse:
        return answer(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return answer(validation_error(error))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        # 404 for an unknown path, 405 for a wrong method, 400 for a body that is not JSON.
        kind = "invalid_request_error" if error.status_code < 500 else "server_error"
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "invalid_request")
        return answer(OpenAIError(error.status_code, str(error.detail), kind, None, code))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        # A bug, not the caller's fault: the details go to the log, not to the caller.
        logger.error("unexpected error serving %s %s", request.method, request.url.path, exc_info=error)
        message = "internal error: the server failed to answer this request"
        return answer(OpenAIError(500, message, "server_error", None, "internal_error"))
