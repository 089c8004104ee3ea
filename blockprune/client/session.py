"""The client's HTTP layer: the API key, timeouts, error mapping and retries.

Which calls are retried: those safe to repeat (GET, PUT, cancel, completing an upload) and
POST /v1/jobs, which carries an Idempotency-Key made once per create call, so a retry of a
request the service did handle returns the job it made. They are retried on a dropped or
refused connection, a timeout, 429 and 502/503/504, after `Retry-After` when the answer gives
one, else after an exponential backoff with jitter (service.backoff, the workers' own).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from blockprune.client.errors import (
    ApiError,
    ClientError,
    ConnectionFailed,
    StorageError,
    api_error,
    retry_after,
)
from contract import __version__
from service.backoff import backoff_s

T = TypeVar("T")
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Failures of the network, not of the request: worth another try.
NETWORK_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
CHUNK = 1 << 20


class Session:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float,
        retries: int,
        backoff_base_s: float,
        backoff_cap_s: float,
        max_wait_s: float,
        transport: httpx.BaseTransport | None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries, self.max_wait_s = retries, max_wait_s
        self.backoff_base_s, self.backoff_cap_s = backoff_base_s, backoff_cap_s
        self.sleep: Callable[[float], None] = time.sleep
        # The key goes on API requests only: a presigned URL carries its own signature, and S3
        # refuses a request with two authentications.
        self.auth = {"Authorization": f"Bearer {api_key}"}
        self.http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": f"blockprune-client/{__version__}"},
        )

    def close(self) -> None:
        self.http.close()

    # ---- the API -----------------------------------------------------------------------------
    def api(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        retry: bool = True,
        deadline: float | None = None,
    ) -> Any:
        """The JSON of a 2xx answer to an API call; an ApiError (a subclass by status) else.
        `deadline` (time.monotonic()): no retry waits past it."""

        def attempt() -> Any:
            response = self.http.request(
                method, path, json=json, params=params, headers={**self.auth, **(headers or {})}
            )
            if response.is_error:
                raise api_error(response)
            return response.json()

        return self.retrying(attempt, retry, f"{method} {self.base_url}{path}", deadline)

    # ---- presigned URLs (S3) -----------------------------------------------------------------
    def put(
        self,
        url: str,
        what: str,
        path: Path,
        offset: int = 0,
        size: int | None = None,
        headers: dict[str, str] | None = None,
        written_once: bool = False,
    ) -> str:
        """PUT `size` bytes of the file at `offset` (all of it by default), with the `headers`
        the URL was signed with; the ETag. `written_once`: the URL takes one PUT (signed with
        If-None-Match: *), so a retry's 412 means an earlier try got through."""
        tries = 0

        def attempt() -> str:
            nonlocal tries
            tries += 1
            with path.open("rb") as f:
                f.seek(offset)
                body = f.read(size) if size is not None else f
                response = self.http.put(url, content=body, headers=headers)
            if written_once and tries > 1 and response.status_code == 412:
                return ""  # stored by a try whose answer was lost: /complete checks its size
            _check_storage(response, what)
            return response.headers.get("ETag", "")

        return self.retrying(attempt, True, what)

    def fetch(self, url: str, what: str, target: Path) -> tuple[int, str]:
        """GET a presigned URL into `target`; its size and sha256. A retry starts over."""

        def attempt() -> tuple[int, str]:
            digest, size = hashlib.sha256(), 0
            with self.http.stream("GET", url) as response, target.open("wb") as out:
                _check_storage(response, what)
                for chunk in response.iter_bytes(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            return size, digest.hexdigest()

        return self.retrying(attempt, True, what)

    # ---- retries -----------------------------------------------------------------------------
    def retrying(
        self, attempt: Callable[[], T], retry: bool, what: str, deadline: float | None = None
    ) -> T:
        """attempt(), again after each transient failure while retries (and, if given, time
        before `deadline`) are left."""
        tries = 0
        while True:
            try:
                return attempt()
            except NETWORK_ERRORS as e:
                failure: Exception = ConnectionFailed(
                    f"{what}: no answer ({type(e).__name__}: {e})"
                )
                hint = None
            except (ApiError, StorageError) as e:
                if not retryable(e):
                    raise
                failure, hint = e, e.retry_after
            tries += 1
            if not retry or tries > self.retries:
                raise failure
            wait = hint if hint is not None else self.backoff(tries)
            if wait > self.max_wait_s:  # not worth blocking the caller this long
                raise failure
            if deadline is not None and time.monotonic() + wait >= deadline:
                raise failure  # the caller's time is up before the next try
            self.sleep(wait)

    def backoff(self, tries: int) -> float:
        return backoff_s(tries, self.backoff_base_s, self.backoff_cap_s)


def retryable(error: ClientError) -> bool:
    """A failure that says "not now" (no answer, 429, 502-504), which `retrying` tries again."""
    if isinstance(error, (ApiError, StorageError)):
        return error.status in RETRY_STATUSES
    return isinstance(error, ConnectionFailed)


def _check_storage(response: httpx.Response, what: str) -> None:
    if response.is_error:
        raise StorageError(response.status_code, what, retry_after(response))
