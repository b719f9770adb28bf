"""Errors at the HTTP edge: one exception type, one mapping from engine errors, OpenAI's shape.

Every error response body is ``{"error": {"message", "type", "param", "code"}}``; overload
answers (429, 503) carry ``Retry-After``. Handlers below turn FastAPI's own validation errors
(malformed JSON, wrong types) into 400s of the same shape.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.engine.errors import CapacityError, EngineError, InvalidRequestError
from services.worker_errors import EngineUnavailableError

log = logging.getLogger("pdserve.http")

TYPE_OF_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
}


class ApiError(Exception):
    """An error answer: HTTP status, a message the caller can act on, optional details."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after

    @property
    def type(self) -> str:
        return TYPE_OF_STATUS.get(self.status, "server_error" if self.status >= 500 else "error")

    def body(self) -> dict[str, Any]:
        """The OpenAI-shaped error object."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def api_error_from(exc: BaseException) -> ApiError:
    """The one mapping from an engine error to an HTTP answer (anything unknown is a 500)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, InvalidRequestError):
        return ApiError(400, str(exc))
    if isinstance(exc, CapacityError):
        return ApiError(429, str(exc), code="capacity", retry_after=1)
    if isinstance(exc, EngineUnavailableError):
        return ApiError(503, str(exc), code="engine_unavailable", retry_after=5)
    if isinstance(exc, EngineError):
        return ApiError(500, str(exc))
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}")


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """A readable message (and the offending parameter) from FastAPI's validation errors."""
    messages, param = [], None
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            detail = (error.get("ctx") or {}).get("error", "")
            return f"the request body is not valid JSON: {detail}".rstrip(": "), None
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        if not location:
            return "the request body must be a JSON object (Content-Type: application/json)", None
        param = param or location
        messages.append(f"{location}: {error.get('msg')}" if location else str(error.get("msg")))
    return "; ".join(messages) or "invalid request", param


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` in OpenAI's shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(EngineError)
    async def _engine_error(_: Request, exc: EngineError) -> JSONResponse:
        return api_error_from(exc).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return ApiError(400, message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return ApiError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return api_error_from(exc).response()
