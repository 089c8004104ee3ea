"""Each request's id, its log line and its HTTP metrics: one pure ASGI middleware, outermost, so
it sees every answer, a 413 of api.limits.BodyLimit included.

The request id is the client's `X-Request-ID` when that is a sane token (a proxy's or a
client's id joins their logs to ours), else a new one; it is in the response's `X-Request-ID`
and in every log line written while the request runs (service.logs).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.routing import compile_path

from service.logs import log_context

log = logging.getLogger("api.requests")
REQUESTS = Counter(
    "blockprune_http_requests",
    "HTTP requests answered, by method, route template and status code",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "blockprune_http_request_duration_seconds",
    "Seconds from a request's arrival to the end of its answer, by method and route template",
    ["method", "route"],
)
# Labels are bounded: a route template, never the path (which holds job ids), and a method
# the API knows, so a client cannot mint series.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# Scraped or probed every few seconds: their lines are DEBUG, not a flood of INFO.
QUIET_ROUTES = frozenset({"/metrics", "/healthz", "/readyz"})

Scope = dict[str, Any]


class RequestTelemetry:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.routes: list[tuple[re.Pattern[str], str]] | None = None  # the app's, at first use

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        status = 500  # what the client gets when the app raises before it answers
        began = time.perf_counter()

        async def send_with_id(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        with log_context(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                self._record(scope, status, time.perf_counter() - began)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        method = scope["method"] if scope["method"] in METHODS else "other"
        if self.routes is None:
            self.routes = route_patterns(scope["app"])
        route = next((t for pattern, t in self.routes if pattern.match(scope["path"])), UNMATCHED)
        REQUESTS.labels(method, route, str(status)).inc()
        LATENCY.labels(method, route).observe(seconds)
        log.log(
            logging.DEBUG if route in QUIET_ROUTES else logging.INFO,
            "%s %s %d %.1f ms",
            scope["method"],
            scope["path"],
            status,
            seconds * 1000,
            extra={
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 1),
                "job_id": scope.get("path_params", {}).get("job_id"),
            },
        )


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if SANE_ID.fullmatch(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def route_patterns(app: Any) -> list[tuple[re.Pattern[str], str]]:
    """Each route's path as declared (`/v1/jobs/{job_id}`), prefix included, with its regex.
    Matched on the path, not read from the routed request, so that a request answered before
    routing (a body over the limit) has its route too."""
    try:  # FastAPI >= 0.16x keeps included routers nested; this walks them
        from fastapi.routing import iter_route_contexts

        paths = [context.path_format for context in iter_route_contexts(app.routes)]
    except ImportError:  # older FastAPI copies every route, prefixed, into app.routes
        paths = [getattr(route, "path_format", None) for route in app.routes]
    return [(compile_path(path)[0], path) for path in dict.fromkeys(paths) if path]
