"""The FastAPI application: `uvicorn --factory api.app:create_app` (or `blockprune api`).

It imports no torch: the job contract and the service package are all it needs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.errors import error_code_table, install_error_handlers
from api.limits import BodyLimit, InFlightLimit
from api.routers import health, jobs, metrics, tenant, ui, uploads
from api.telemetry import RequestTelemetry
from contract import __version__
from service.outbox import Relay
from service.settings import get_settings

DESCRIPTION = f"""Training-free block pruning of LLMs (BlockPruner), as a service.
Authenticate with `Authorization: Bearer <key>` (keys: `blockprune keys create`).

Every error is `{{"error": {{"code", "message", "field"?}}}}`; the codes:

{error_code_table()}
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The outbox relay runs beside the API: a created job's message is sent from here at
    once (the route wakes it), and retried from here while the broker is down."""
    relay = Relay(get_settings())
    relay.start()
    app.state.relay = relay

    try:
        yield
    finally:
        relay.stop()


def create_app() -> FastAPI:
    app = FastAPI(
        title="BlockPrune",
        version=__version__,
        description=DESCRIPTION,
        docs_url="/docs",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(jobs.router, prefix="/v1")
    app.include_router(uploads.router, prefix="/v1")
    app.include_router(tenant.router, prefix="/v1")
    app.include_router(ui.router)  # the web dashboard at /ui (docs/dashboard.md)
    settings = get_settings()
    if settings.metrics_enabled:  # Prometheus' GET /metrics (docs/observability.md)
        app.include_router(metrics.router)
    # One pooled connection per request inside, one for the outbox relay (api.limits).
    app.add_middleware(InFlightLimit, limit=max(1, settings.db_pool_capacity() - 1))
    # Outermost: a body over the limit never reaches authentication or the JSON parser.
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    # Around even that: every answer, a 413 included, gets a request id, a log line, metrics.
    app.add_middleware(RequestTelemetry)
    return app
