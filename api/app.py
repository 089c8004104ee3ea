"""The FastAPI application: `uvicorn --factory api.app:create_app` (or `blockprune api`)."""

from __future__ import annotations

from fastapi import FastAPI

from api.errors import install_error_handlers
from api.routers import health, jobs
from core import __version__


def create_app() -> FastAPI:
    app = FastAPI(
        title="BlockPrune",
        version=__version__,
        description="Training-free block pruning of LLMs (BlockPruner), as a service. "
        "Authenticate with `Authorization: Bearer <key>` (keys: `blockprune keys create`).",
        docs_url="/docs",
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(jobs.router, prefix="/v1")
    return app
