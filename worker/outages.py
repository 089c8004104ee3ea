"""Outages of what a job depends on (S3, the hub, PostgreSQL) are waited out, not counted as
crashes.

A transient error (connection refused or reset, a timeout, a 5xx, throttling) makes the worker
wait with backoff (service.backoff) and try the same step again, under a time budget per
dependency that the operator sets (`*_outage_budget_s`). Only a budget spent, or a real error,
ends the attempt: `DependencyUnavailable` fails the job with dependency_unavailable. The job
stays running meanwhile, with "retry" events that say what it waits for (written when the
database is the one that is up). The steps retried are idempotent: a download lands in a temp
folder before it is renamed into the cache, an upload writes its manifest last, a database
write is one transaction.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from enum import Enum
from typing import Any, TypeVar

from botocore.exceptions import ClientError, ConnectionError, HTTPClientError
from sqlalchemy.exc import DBAPIError

from contract import ErrorCode, UserError
from core.hub import hub_offline
from service.backoff import backoff_s
from service.db import database_unavailable
from service.settings import Settings, get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")
# S3 error codes that say "not now", not "no": retried.
S3_TRANSIENT_CODES = {
    "500",
    "502",
    "503",
    "504",
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "Throttling",
    "ThrottlingException",
}


class Dependency(str, Enum):
    S3 = "s3"
    HUB = "hub"
    DATABASE = "database"


class DependencyUnavailable(Exception):
    """A dependency stayed unreachable past its budget: the job fails with this."""

    def __init__(self, dependency: Dependency, waited_s: float, budget_s: float) -> None:
        self.dependency, self.waited_s, self.budget_s = dependency, waited_s, budget_s
        super().__init__(
            f"{dependency.value} stayed unreachable for {waited_s:.0f} s, longer than this "
            f"service's budget of {budget_s:.0f} s "
            f"(BLOCKPRUNE_{dependency.value.upper()}_OUTAGE_BUDGET_S)"
        )

    def to_json(self) -> dict[str, str]:
        return {"code": ErrorCode.DEPENDENCY_UNAVAILABLE.value, "message": str(self)}


def transient(error: BaseException) -> Dependency | None:
    """The dependency whose passing outage `error` is, or None for a real error. Follows the
    exception's causes: boto3 wraps a failed part upload in S3UploadFailedError."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (ConnectionError, HTTPClientError)):
            return Dependency.S3
        if isinstance(seen, ClientError):
            err = seen.response.get("Error", {})
            status = seen.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if str(err.get("Code", "")) in S3_TRANSIENT_CODES or status >= 500:
                return Dependency.S3
            return None  # a 403, a 404: the user's, never waited out
        if type(seen).__name__ == "RetriesExceededError":  # boto3: a download's retries spent
            return Dependency.S3
        if isinstance(seen, UserError):
            # Offline by configuration (HF_HUB_OFFLINE) is no outage: nothing will come back.
            passing = seen.code == ErrorCode.HUB_UNREACHABLE and not hub_offline()
            return Dependency.HUB if passing else None
        if isinstance(seen, DBAPIError):  # the API's 503 follows the same rule
            return Dependency.DATABASE if database_unavailable(seen) else None
        seen = seen.__cause__ or seen.__context__
    return None


OnRetry = Callable[[Dependency, int, float, float, Exception], None]


def through_outages(
    step: Callable[[], T],
    settings: Settings,
    *,
    on_retry: OnRetry | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    only: tuple[Dependency, ...] = tuple(Dependency),
) -> T:
    """`step()`, tried again after each transient error of a dependency in `only`, with
    backoff, until its budget is spent (then DependencyUnavailable). `on_retry(dependency,
    tries, waited_s, next_wait_s, error)` hears of each wait. `should_stop` cuts a wait short
    (a cancel, a lost lease): the last error is raised then."""
    began: dict[Dependency, float] = {}
    tries: dict[Dependency, int] = {}
    while True:
        try:
            return step()
        except Exception as error:
            dependency = transient(error)
            if dependency is None or dependency not in only:
                raise
            now = time.monotonic()
            waited = now - began.setdefault(dependency, now)
            tries[dependency] = tries.get(dependency, 0) + 1
            budget = float(getattr(settings, f"{dependency.value}_outage_budget_s"))
            if waited >= budget:
                raise DependencyUnavailable(dependency, waited, budget) from error
            wait = backoff_s(
                tries[dependency], settings.outage_backoff_base_s, settings.outage_backoff_max_s
            )
            wait = min(wait, budget - waited)
            log.warning(
                "%s unavailable (try %d, %.1f s so far): %s; next try in %.1f s",
                dependency.value,
                tries[dependency],
                waited,
                error,
                wait,
            )
            if on_retry is not None:
                _tell(on_retry, dependency, tries[dependency], waited, wait, error)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if should_stop():
                    raise
                time.sleep(min(0.05, max(deadline - time.monotonic(), 0)))


def _tell(on_retry: OnRetry, *args: Any) -> None:
    try:
        on_retry(*args)
    except Exception:  # telling is best effort: the wait itself must not fail
        log.warning("could not record a retry", exc_info=True)


def outlasts_database_outages(write: Callable[..., T]) -> Callable[..., T]:
    """A lease's write (one transaction, so safe to repeat) that waits out a PostgreSQL outage
    within its budget instead of ending the attempt."""

    @functools.wraps(write)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        return through_outages(
            lambda: write(*args, **kwargs), get_settings(), only=(Dependency.DATABASE,)
        )

    return wrapper
