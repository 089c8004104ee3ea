"""One error shape for every failure: {"error": {"code", "message", "field"?}}."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


class ApiError(Exception):
    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code, self.code, self.message, self.field = status_code, code, message, field
        self.headers = headers


def not_found(job_id: str) -> ApiError:
    # Another tenant's job is "not found" too: its existence is not ours to reveal.
    return ApiError(404, "not_found", f"job {job_id} not found")


def _body(code: str, message: str, field: str | None = None, **extra) -> dict:
    error = {"code": code, "message": message, **extra}
    if field is not None:
        error["field"] = field
    return {"error": error}


def _field_name(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(
        _body(exc.code, exc.message, exc.field), status_code=exc.status_code, headers=exc.headers
    )


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"field": _field_name(tuple(e["loc"])), "message": e["msg"].removeprefix("Value error, ")}
        for e in exc.errors()
    ]
    first = problems[0] if problems else {"field": "body", "message": "invalid request"}
    message = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return JSONResponse(
        _body("invalid_request", message, first["field"], errors=problems), status_code=422
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
