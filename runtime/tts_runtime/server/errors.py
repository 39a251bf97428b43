"""One error shape for every failure: OpenAI's `{"error": {...}}`, the right status, Retry-After on 503."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tts_runtime.engine.errors import (
    BusyError,
    InsufficientGpuMemoryError,
    InvalidRequestError,
    InvalidTransitionError,
    ModelLoadError,
    ResidencyError,
    UnknownModelError,
    WorkerCrashedError,
)

log = logging.getLogger("tts_runtime.server")

_CODES: dict[type[ResidencyError], str] = {
    UnknownModelError: "model_not_found",
    InvalidRequestError: "invalid_request",
    InvalidTransitionError: "invalid_transition",
    InsufficientGpuMemoryError: "insufficient_gpu_memory",
    ModelLoadError: "model_load_failed",
    WorkerCrashedError: "worker_crashed",
    BusyError: "busy",
}


class ApiError(Exception):
    """A client-facing error raised by a route: status, message and the OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.retry_after = retry_after
        self.headers = dict(headers or {})


def from_residency(err: ResidencyError) -> ApiError:
    """Map an engine error to its HTTP answer (status and retry hint come from the error itself)."""
    code = next((c for kind, c in _CODES.items() if isinstance(err, kind)), "residency_error")
    # KeyError's str() wraps the message in quotes; args[0] is the message itself.
    message = str(err.args[0]) if err.args else type(err).__name__
    retry_after = getattr(err, "retry_after", None)
    if retry_after is None and err.status == 503:
        retry_after = 1.0
    return ApiError(err.status, message, code=code, retry_after=retry_after)


def error_response(err: ApiError) -> JSONResponse:
    kind = "invalid_request_error" if err.status < 500 else "server_error"
    if err.status == 401:
        kind = "authentication_error"
    headers = dict(err.headers)
    if err.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(err.retry_after)))
    body = {"error": {"message": err.message, "type": kind, "param": err.param, "code": err.code}}
    return JSONResponse(body, status_code=err.status, headers=headers)


def validation_message(errors: list[Any]) -> tuple[str, str | None]:
    """A readable sentence from pydantic's errors, and the first offending parameter."""
    parts: list[str] = []
    param: str | None = None
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path")]
        where = ".".join(loc)
        if error.get("type") == "json_invalid":
            return (
                "the request body is not valid JSON: send a JSON object with Content-Type application/json",
                None,
            )
        if error.get("type") == "missing":
            parts.append(f"'{where}' is required")
        elif error.get("type") == "model_attributes_type":
            parts.append("the request body must be a JSON object")
        else:
            msg = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
            # Our validators already name the field; pydantic's own messages do not.
            parts.append(f"'{where}': {msg}" if where and where not in msg else msg)
        param = param or (where or None)
    return "; ".join(parts) or "invalid request", param


def install(app: FastAPI, count_error: Any) -> None:
    """Register the handlers; `count_error(kind)` feeds residency_errors_total."""

    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        count_error(exc.code)
        return error_response(exc)

    async def on_residency_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ResidencyError)
        mapped = from_residency(exc)
        count_error(mapped.code)
        return error_response(mapped)

    async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        message, param = validation_message(list(exc.errors()))
        count_error("invalid_request")
        return error_response(ApiError(400, message, code="invalid_request", param=param))

    async def on_http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            exc.status_code, "http_error"
        )
        count_error(code)
        headers = dict(exc.headers or {})
        return error_response(ApiError(exc.status_code, str(exc.detail), code=code, headers=headers))

    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        # A bug on our side: log the stack, tell the client nothing about internals.
        log.exception("unhandled error", exc_info=exc)
        count_error("internal")
        return error_response(ApiError(500, "internal server error; see the runtime's log", code="internal"))

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(ResidencyError, on_residency_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
