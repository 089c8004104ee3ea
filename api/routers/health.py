"""/healthz: the process is up. /readyz: the database, the broker and storage answer."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import SettingsDep
from service.db import get_engine
from service.settings import Settings

router = APIRouter(tags=["health"])
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
    body = {"status": "ready" if ready else "unavailable", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)


def _check(probe) -> str:
    try:
        probe()
    except Exception as e:  # a readiness probe reports, it does not raise
        return f"error: {type(e).__name__}: {str(e)[:200]}"
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


def _storage(settings: Settings) -> None:
    from service.storage import s3_client

    s3_client(settings, quick=True).head_bucket(Bucket=settings.s3_bucket)
