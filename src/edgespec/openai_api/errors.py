"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with a status."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class OpenAIError(Exception):
    """An error the API reports to the caller as OpenAI does."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, "invalid_request_error", param, code)


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
    param = _param(first.get("loc", ()))
    if first.get("type") == "extra_forbidden":
        return bad_request(f"Unrecognized request argument supplied: {param}", param, "unsupported_parameter")
    # Validators raise ValueError("..."): pydantic prefixes "Value error, ".
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    code = "unsupported_parameter" if message.startswith("unsupported:") else "invalid_value" if param else None
    message = message.removeprefix("unsupported:").strip()
    return bad_request(f"{param}: {message}" if param else message, param, code)


def install_error_handlers(app: Any) -> None:
    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, error: OpenAIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return validation_error(error).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        # 404 for an unknown path, 405 for a wrong method, 400 for a body that is not JSON.
        kind = "invalid_request_error" if error.status_code < 500 else "server_error"
        return OpenAIError(error.status_code, str(error.detail), kind).response()
