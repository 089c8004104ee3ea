"""/healthz: the process is up. /readyz: the database, the broker and storage answer; and
whether a reaper runs (reported, not required)."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import SettingsDep
from service.db import get_engine
from service.settings import Settings

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)
TIMEOUT_S = 3


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(settings: SettingsDep) -> JSONResponse:
    checks = {
        "database": _check(_database),
        "broker": _check(lambda: _broker(settings)),
        "storage": _check(lambda: _storage(settings)),
    }
    ready = all(c == "ok" for c in checks.values())
    # Reported, not required: the API serves without one, but a dead worker's job stays
    # `running` until a reaper (in a worker, or `blockprune reaper`) judges its lease.
    checks["reaper"] = _check(_reaper) if checks["broker"] == "ok" else "unknown"
    body = {"status": "ready" if ready else "unavailable", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)


def _check(probe) -> str:
    """ "ok" or "failed": /readyz needs no key, so what failed and why goes to the log only."""
    try:
        probe()
    except Exception:  # a readiness probe reports, it does not raise
        log.warning("readiness check %s failed", getattr(probe, "__name__", probe), exc_info=True)
        return "failed"
    return "ok"


def _database() -> None:
    with get_engine().connect() as connection:
        connection.execute(text("SELECT 1"))


def _broker(settings: Settings) -> None:
    import redis

    client = redis.Redis.from_url(
        settings.broker_url, socket_connect_timeout=TIMEOUT_S, socket_timeout=TIMEOUT_S
    )
    try:
        client.ping()
    finally:
        client.close()


def _reaper() -> None:
    from service.queue import reaper_seen

    if not reaper_seen():
        raise RuntimeError("no reaper has made a pass lately (no worker, no `blockprune reaper`)")


def _storage(settings: Settings) -> None:
    from service.storage import s3_client

    s3_client(settings, quick=True).head_bucket(Bucket=settings.s3_bucket)
