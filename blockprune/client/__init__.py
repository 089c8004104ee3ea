"""A typed Python client of the BlockPrune service's API (docs/client.md).

    from blockprune.client import Client

    with Client("http://127.0.0.1:8000", "bp_...") as client:
        model = client.uploads.model("my-llama/")            # -> "upload:<id>"
        job = client.jobs.create(model=model, calibration="builtin:stdlib-docs", num_blocks=8)
        job = client.jobs.wait(job.id, on_update=lambda j: print(j.status, j.progress.fraction))
        client.jobs.download(job.id, "pruned/my-llama-8")     # checked against the manifest

It needs httpx and pydantic, never torch or the service's frameworks.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from blockprune.client.errors import (
    ApiError,
    ClientError,
    Conflict,
    ConnectionFailed,
    IntegrityError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    ServerError,
    StorageError,
    Unauthenticated,
    WaitTimeout,
)
from blockprune.client.jobs import Jobs
from blockprune.client.models import ArtifactFile, Artifacts, Event, Job, JobError, Upload
from blockprune.client.session import Session
from blockprune.client.uploads import Uploads

URL_ENV, KEY_ENV = "BLOCKPRUNE_API_URL", "BLOCKPRUNE_API_KEY"


class Client:
    """One API key's view of a service. `retries` is how many times a call safe to repeat is
    tried again after a transient failure; a wait longer than `max_wait_s` (a long Retry-After)
    is not waited for: the error is raised instead."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        retries: int = 4,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 8.0,
        max_wait_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.session = Session(
            base_url,
            api_key,
            timeout=timeout,
            retries=retries,
            backoff_base_s=backoff_base_s,
            backoff_cap_s=backoff_cap_s,
            max_wait_s=max_wait_s,
            transport=transport,
        )
        self.jobs = Jobs(self.session)
        self.uploads = Uploads(self.session)

    @classmethod
    def from_env(cls, base_url: str | None = None, api_key: str | None = None, **kw: Any) -> Client:
        """A client of BLOCKPRUNE_API_URL with BLOCKPRUNE_API_KEY (each overridden if given)."""
        url, key = base_url or os.environ.get(URL_ENV), api_key or os.environ.get(KEY_ENV)
        if not url:
            raise ClientError(f"no API URL: set {URL_ENV} or pass --api-url")
        if not key:
            raise ClientError(f"no API key: set {KEY_ENV} or pass --api-key")
        return cls(url, key, **kw)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "ApiError",
    "ArtifactFile",
    "Artifacts",
    "Client",
    "ClientError",
    "Conflict",
    "ConnectionFailed",
    "Event",
    "IntegrityError",
    "InvalidRequest",
    "Job",
    "JobError",
    "NotFound",
    "PayloadTooLarge",
    "QuotaExceeded",
    "ServerError",
    "StorageError",
    "Unauthenticated",
    "Upload",
    "WaitTimeout",
]
