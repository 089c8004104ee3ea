"""Request dependencies, as Annotated aliases: settings, a database session, the tenant, the
outbox relay."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.errors import ApiError
from contract import ErrorCode
from service.db import get_engine
from service.keys import tenant_for_key
from service.outbox import Relay
from service.settings import Settings, get_settings

SettingsDep = Annotated[Settings, Depends(get_settings)]


async def _session() -> AsyncIterator[Session]:
    """A session per request; handlers that write call session.commit() before answering.

    Async on purpose: opening a Session does no I/O, and closing it (a ROLLBACK of a read-only
    transaction, the connection back to the pool) runs here on the event loop instead of in the
    threadpool. Closed from a pool thread, as a sync dependency is, every thread could be busy
    waiting for a pooled connection that only a close (needing a thread) would free: under load
    (bench/load.py, 200 GET/s) requests hung until the pool's 30 s timeout."""
    session = Session(get_engine(), expire_on_commit=False)
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(_session)]
_bearer = HTTPBearer(auto_error=False, description="An API key: `blockprune keys create`")
_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def _tenant(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    if credentials is None:
        raise ApiError(
            ErrorCode.UNAUTHENTICATED,
            "missing 'Authorization: Bearer <key>'",
            headers=_UNAUTHORIZED,
        )
    tenant_id = tenant_for_key(session, credentials.credentials)
    # Commit the key's last use, if it was written, and in any case end the transaction: the
    # connection goes back to the pool before the route waits for a thread. Held across that
    # wait, every pooled connection could sit with a request queued for a thread while every
    # thread waits for a connection (a deadlock bench/load.py hit at 200 GET/s).
    session.commit()
    if tenant_id is None:
        raise ApiError(ErrorCode.UNAUTHENTICATED, "invalid API key", headers=_UNAUTHORIZED)
    return tenant_id


TenantDep = Annotated[str, Depends(_tenant)]


def _relay(request: Request) -> Relay | None:
    """This process's outbox relay (started with the app; None under a test client that did
    not run the app's lifespan: the workers' relays send then)."""
    return getattr(request.app.state, "relay", None)


RelayDep = Annotated[Relay | None, Depends(_relay)]
