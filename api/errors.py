"""One error shape for every failure: {"error": {"code", "message", "field"?}}, with `code`
one of contract.ErrorCode (rendered in the OpenAPI description by `error_code_table`)."""

from __future__ import annotations

import logging
import re
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from contract import ErrorCode
from service.db import database_unavailable

log = logging.getLogger(__name__)
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# Starlette's own errors (no route, wrong method...) in the one error shape.
_HTTP_CODES = {
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    415: ErrorCode.INVALID_REQUEST,
}
# Retry-After of a 503 while PostgreSQL is down. Not a setting: the API cannot know how long an
# outage lasts, and a short pause lets a client's polls notice the end within seconds while
# keeping each client to one request per pause.
DATABASE_RETRY_AFTER_S = 2


class ErrorDetail(BaseModel):
    code: ErrorCode
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


# For routes' `responses=`: the error shape, in the OpenAPI schema.
ERROR_RESPONSES: dict[int | str, dict] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in [
        (401, "no valid API key"),
        (404, "no such job or upload for this tenant"),
        (409, "the job is not in a state that allows this"),
        (413, "the request body is over the operator's limit"),
        (422, "the request does not validate; `field` names the first problem"),
        (429, "a tenant quota is reached; retry after Retry-After seconds"),
        (503, "the database is unavailable for now; retry after Retry-After seconds"),
    ]
}


# The HTTP status of each error code: the one place it is chosen (tests/test_api_errors.py keeps
# raise sites from picking their own). A code not listed is the request's fault: 422.
HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.JOB_FINISHED: 409,
    ErrorCode.NOT_READY: 409,
    ErrorCode.IDEMPOTENCY_KEY_REUSED: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.QUOTA_EXCEEDED: 429,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.DEPENDENCY_UNAVAILABLE: 503,
}


def http_status(code: ErrorCode) -> int:
    return HTTP_STATUS.get(code, 422)


class ApiError(Exception):
    """An error response: its status comes from its code (`HTTP_STATUS`)."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.field, self.headers = code, message, field, headers
        self.status_code = http_status(code)


def not_found(job_id: str, what: str = "job") -> ApiError:
    # Another tenant's job is "not found" too: its existence is not ours to reveal.
    return ApiError(ErrorCode.NOT_FOUND, f"{what} {printable(job_id)[:64]} not found")


def check_id(value: str, what: str = "job") -> str:
    """An id is a UUID: anything else is a 404 before any query is made."""
    try:
        if str(uuid.UUID(value)) == value:
            return value
    except ValueError:
        pass
    raise not_found(value, what)


def printable(text: str) -> str:
    """`text` with control characters and lone surrogates escaped (a response must encode)."""
    return _UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def error_code_table() -> str:
    """The error codes as a Markdown table, for the API's description."""
    rows = [f"| `{c.value}` | {c.describe()} |" for c in ErrorCode]
    return "\n".join(["| code | meaning |", "|---|---|", *rows])


def error_body(code: ErrorCode, message: str, field: str | None = None, **extra) -> dict:
    error = {"code": code.value, "message": printable(message), **extra}
    if field is not None:
        error["field"] = printable(field)
    return {"error": error}


def _field_name(loc: tuple) -> str:
    """A dotted path (`metadata.a`, `files.0.size`); never a bare index, which is a character
    position in a body that is not JSON: that is the body's own problem."""
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    if all(isinstance(p, int) for p in parts):
        return "body"
    return ".".join(str(p) for p in parts)


def _problem(e: dict) -> dict[str, str]:
    message = e["msg"].removeprefix("Value error, ")
    if e.get("type") == "json_invalid":  # loc holds the character where parsing stopped
        at = next((p for p in reversed(e["loc"]) if isinstance(p, int)), None)
        message += f" at character {at}" if at is not None else ""
    return {"field": printable(_field_name(tuple(e["loc"]))), "message": printable(message)}


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(
        error_body(exc.code, exc.message, exc.field),
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [_problem(e) for e in exc.errors()]
    first = problems[0] if problems else {"field": "body", "message": "invalid request"}
    message = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return JSONResponse(
        error_body(ErrorCode.INVALID_REQUEST, message, first["field"], errors=problems),
        status_code=http_status(ErrorCode.INVALID_REQUEST),
    )


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, ErrorCode.INVALID_REQUEST)
    # FastAPI's 400 for a body it could not decode (bytes that are not UTF-8, JSON nested past
    # the parser's depth) names no field: it is the body.
    field = "body" if exc.status_code == 400 and "parsing the body" in str(exc.detail) else None
    return JSONResponse(
        error_body(code, str(exc.detail), field), status_code=exc.status_code, headers=exc.headers
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug: the tenant gets a reference, the log gets the exception."""
    reference = uuid.uuid4().hex[:12]
    log.error(
        "unhandled error %s on %s %s", reference, request.method, request.url.path, exc_info=exc
    )
    message = f"internal error (reference {reference}); it has been logged"
    code = ErrorCode.INTERNAL_ERROR
    return JSONResponse(error_body(code, message), status_code=http_status(code))


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """PostgreSQL out of reach (a request's query, or the API key's lookup): a 503 the client
    retries, not a 500. The message names no host: the DSN is the operator's, not the tenant's."""
    assert isinstance(exc, DBAPIError)
    if not database_unavailable(exc):
        return await _unexpected(request, exc)
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc.orig)
    code = ErrorCode.DEPENDENCY_UNAVAILABLE
    return JSONResponse(
        error_body(code, "the database is unavailable; retry in a few seconds"),
        status_code=http_status(code),
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
