"""Request dependencies, as Annotated aliases: settings, a database session, the tenant, the
outbox relay."""

from __future__ import annotations

from collections.abc import Iterator
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


def _session() -> Iterator[Session]:
    """A session per request; handlers that write call session.commit() before answering."""
    with Session(get_engine(), expire_on_commit=False) as session:
        yield session


SessionDep = Annotated[Session, Depends(_session)]
_bearer = HTTPBearer(auto_error=False, description="An API key: `blockprune keys create`")
_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def _tenant(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    if credentials is None:
        raise ApiError(
            401,
            ErrorCode.UNAUTHENTICATED,
            "missing 'Authorization: Bearer <key>'",
            headers=_UNAUTHORIZED,
        )
    tenant_id = tenant_for_key(session, credentials.credentials)
    session.commit()  # the key's last use; nothing else is written yet
    if tenant_id is None:
        raise ApiError(401, ErrorCode.UNAUTHENTICATED, "invalid API key", headers=_UNAUTHORIZED)
    return tenant_id


TenantDep = Annotated[str, Depends(_tenant)]


def _relay(request: Request) -> Relay | None:
    """This process's outbox relay (started with the app; None under a test client that did
    not run the app's lifespan: the workers' relays send then)."""
    return getattr(request.app.state, "relay", None)


RelayDep = Annotated[Relay | None, Depends(_relay)]
