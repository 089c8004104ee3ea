"""The database engine and transactions. PostgreSQL is the source of truth for every job."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from service.settings import get_settings

_engine: Engine | None = None


def get_engine() -> Engine:
    global _engine
    if _engine is None:
        settings = get_settings()
        _engine = create_engine(
            settings.database_url,
            pool_pre_ping=True,  # a connection PostgreSQL dropped (a restart) is replaced
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
        )
    return _engine


def reset_engine(*, after_fork: bool = False) -> None:
    """Drop the pooled connections. In a forked child (`after_fork`), leave the parent's sockets
    open (closing them would break the parent) and just stop using them."""
    global _engine
    if _engine is not None:
        _engine.dispose(close=not after_fork)
    _engine = None


@contextmanager
def transaction() -> Iterator[Session]:
    """A session inside one transaction: committed on success, rolled back on any error."""
    with Session(get_engine(), expire_on_commit=False) as session, session.begin():
        yield session


def database_unavailable(error: BaseException) -> bool:
    """Whether `error` is PostgreSQL out of reach for now, not a bad query: worth retrying (the
    worker waits it out, the API answers 503). OperationalError covers a server that is down,
    restarting or unreachable; a connection invalidated mid-query is the same outage seen from
    the pool."""
    return isinstance(error, DBAPIError) and (
        isinstance(error, (OperationalError, InterfaceError)) or error.connection_invalidated
    )
