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


def validation_error(error: RequestValidationError) -> OpenAIError:
    """The first problem pydantic found, named by its parameter (``messages.0.content``)."""
    first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request", "type": ""}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        return bad_request(f"Unrecognized request argument supplied: {param}", param, "unsupported_parameter")
    message = str(first.get("msg", "invalid value"))
    # Validators raise ValueError("..."): pydantic prefixes "Value error, ".
    message = message.removeprefix("Value error, ")
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
