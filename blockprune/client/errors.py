"""What the client raises: one base class, and for the API's answers the API's own error
(`{"error": {"code", "message", "field"}}`) as a typed exception, one subclass per common status.

    try:
        client.jobs.create(model=..., num_blocks=0)
    except InvalidRequest as e:
        print(e.code, e.field, e.message)   # ErrorCode.INVALID_REQUEST num_blocks ...
"""

from __future__ import annotations

from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import httpx

from contract import ErrorCode

if TYPE_CHECKING:
    from blockprune.client.models import Job

# When the answer has no error envelope (a proxy's 502 page), the code its status implies.
_STATUS_CODES = {
    401: ErrorCode.UNAUTHENTICATED,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    422: ErrorCode.INVALID_REQUEST,
    429: ErrorCode.QUOTA_EXCEEDED,
    502: ErrorCode.DEPENDENCY_UNAVAILABLE,
    503: ErrorCode.DEPENDENCY_UNAVAILABLE,
    504: ErrorCode.DEPENDENCY_UNAVAILABLE,
}


class ClientError(Exception):
    """Anything the client raises on purpose."""


class ApiError(ClientError):
    """The API answered with an error. `code` is one of contract.ErrorCode; `field` names the
    request field at fault when there is one; `errors` lists every problem of a 422."""

    def __init__(
        self,
        status: int,
        code: ErrorCode,
        message: str,
        field: str | None = None,
        *,
        errors: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.errors = errors or []
        self.retry_after = retry_after  # seconds, from the Retry-After header

    def __str__(self) -> str:
        return f"{self.message} ({self.code.value}, HTTP {self.status})"


class Unauthenticated(ApiError):
    """401: no API key, or one that is unknown or revoked."""


class NotFound(ApiError):
    """404: no such job or upload for this tenant (another tenant's is not found either)."""


class Conflict(ApiError):
    """409: the job's state does not allow it (cancel a finished job, artifacts before success),
    or an Idempotency-Key reused with another body."""


class PayloadTooLarge(ApiError):
    """413: the request body is over the operator's limit."""


class InvalidRequest(ApiError):
    """422: the request does not validate, or an input is refused; `field` says which."""


class QuotaExceeded(ApiError):
    """429: the tenant has as many active jobs as allowed; `retry_after` says when to try."""


class ServerError(ApiError):
    """5xx: the service failed or a dependency of it is down."""


_CLASSES: dict[int, type[ApiError]] = {
    401: Unauthenticated,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidRequest,
    429: QuotaExceeded,
}


class ConnectionFailed(ClientError):
    """The service (or the storage behind a presigned URL) could not be reached, after the
    retries a call is allowed."""


class StorageError(ClientError):
    """A presigned upload or download URL answered with an error (an expired URL, S3 down)."""

    def __init__(self, status: int, what: str, retry_after: float | None = None) -> None:
        super().__init__(f"storage answered HTTP {status} for {what}")
        self.status, self.retry_after = status, retry_after


class IntegrityError(ClientError):
    """A downloaded file does not match the job's manifest (its size or sha256)."""

    def __init__(self, name: str, what: str, expected: object, got: object) -> None:
        super().__init__(f"{name}: {what} is {got}, the manifest says {expected}")
        self.name, self.what, self.expected, self.got = name, what, expected, got


class WaitTimeout(ClientError):
    """`jobs.wait` ran out of time; the job goes on, and `job` is how it was last seen.
    `unavailable`: what the service answered last, when it was down as time ran out."""

    def __init__(self, job: Job, timeout: float, unavailable: ClientError | None = None) -> None:
        message = f"job {job.id} is still {job.status.value} after {timeout:g} s"
        if unavailable is not None:
            message = (
                f"gave up on job {job.id} after {timeout:g} s: the service is unavailable "
                f"({unavailable}); the job was last seen {job.status.value}"
            )
        super().__init__(message)
        self.job, self.timeout, self.unavailable = job, timeout, unavailable


def api_error(response: httpx.Response) -> ApiError:
    """The typed exception of an API error answer."""
    status = response.status_code
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):  # not JSON, or not an object: a proxy's page
        error = None
    if not isinstance(error, dict):
        error = {"message": response.text[:200] or response.reason_phrase}
    try:
        code = ErrorCode(error.get("code"))
    except ValueError:  # no code, or one this client does not know yet
        code = _STATUS_CODES.get(status, ErrorCode.INTERNAL_ERROR)
    cls = _CLASSES.get(status, ServerError if status >= 500 else ApiError)
    return cls(
        status,
        code,
        str(error.get("message", "")),
        error.get("field"),
        errors=error.get("errors"),
        retry_after=retry_after(response),
    )


def retry_after(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds (it may be a number or an HTTP date), if any."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
