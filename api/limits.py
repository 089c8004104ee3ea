"""A request body larger than the operator's limit is refused before anything reads it: before
authentication, before JSON parsing. A declared Content-Length over the limit is answered at
once; a body without one (chunked) is counted as it arrives and cut off at the limit. Bodies
under the limit (JSON of a few KiB) are read here and handed on."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from api.errors import error_body, http_status
from contract import ErrorCode

Scope = dict[str, Any]


class BodyLimit:
    """Pure ASGI middleware, so no framework buffers the body first."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        # Read the body here, up to the limit (FastAPI would turn an error raised while it
        # reads into a 400), then hand the app the same messages.
        messages, seen = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Any, send: Any) -> None:
        message = f"request body over {self.max_bytes} bytes (BLOCKPRUNE_MAX_REQUEST_BYTES)"
        response = JSONResponse(
            error_body(ErrorCode.PAYLOAD_TOO_LARGE, message),
            status_code=http_status(ErrorCode.PAYLOAD_TOO_LARGE),
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


class InFlightLimit:
    """At most `limit` requests inside the app at once; the others wait here, on the event loop,
    holding neither a thread nor a database connection.

    A request uses one pooled connection at a time, but holds it across threadpool hops (a sync
    route, then its response's validation). With more requests inside than connections, every
    pool thread could wait for a connection while every connection waits, with its request, for
    a thread: bench/load.py at 200 GET/s hung requests until the pool's 30 s timeout. With at
    most as many requests inside as the pool has connections, none waits for one."""

    def __init__(self, app: Any, limit: int) -> None:
        import asyncio

        self.app, self.slots = app, asyncio.Semaphore(limit)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        async with self.slots:
            await self.app(scope, receive, send)
