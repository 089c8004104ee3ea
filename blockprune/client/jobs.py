"""`client.jobs`: create, read, list, cancel, follow and download a tenant's pruning jobs."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from blockprune.client.errors import ApiError, ClientError, IntegrityError, WaitTimeout
from blockprune.client.models import Artifacts, Event, EventList, Job, JobPage
from blockprune.client.session import Session, retryable
from contract import JobSpec, JobStatus


class Jobs:
    def __init__(self, session: Session) -> None:
        self._s = session

    def create(
        self,
        spec: JobSpec | None = None,
        *,
        metadata: dict[str, str] | None = None,
        webhook_url: str | None = None,
        parallelism: int | None = None,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> Job:
        """Queue a job: a JobSpec, or its fields as keywords (`model=`, `calibration=`,
        `num_blocks=`...). The service validates them (an InvalidRequest names the field).

        The request carries an Idempotency-Key (a new uuid4 unless given), the same on every
        retry, so a POST whose answer was lost still makes one job."""
        body: dict[str, Any] = spec.model_dump(mode="json", exclude_none=True) if spec else {}
        body.update(fields)
        if metadata:
            body["metadata"] = metadata
        if webhook_url is not None:
            body["webhook_url"] = webhook_url
        if parallelism is not None:
            body["parallelism"] = parallelism
        key = idempotency_key or str(uuid.uuid4())
        answer = self._s.api("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key})
        return Job.model_validate(answer)

    def get(self, job_id: str) -> Job:
        return Job.model_validate(self._s.api("GET", f"/v1/jobs/{job_id}"))

    def cancel(self, job_id: str) -> Job:
        """Idempotent: a queued job is cancelled at once, a running one becomes `cancelling`. A
        job that already succeeded or failed is a Conflict."""
        return Job.model_validate(self._s.api("POST", f"/v1/jobs/{job_id}/cancel"))

    def events(self, job_id: str) -> Sequence[Event]:
        """The job's history: created, status, phase, iteration, retry, error, uploaded..."""
        return EventList.model_validate(self._s.api("GET", f"/v1/jobs/{job_id}/events")).data

    def artifacts(self, job_id: str) -> Artifacts:
        """The export's files with presigned URLs; a Conflict until the job succeeded."""
        return Artifacts.model_validate(self._s.api("GET", f"/v1/jobs/{job_id}/artifacts"))

    def list(self, status: JobStatus | str | None = None, *, page_size: int = 100) -> Iterator[Job]:
        """Every job of the tenant, newest first, fetched a page at a time as it is iterated."""
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if status is not None:
                params["status"] = JobStatus(status).value
            if after is not None:
                params["after"] = after
            page = JobPage.model_validate(self._s.api("GET", "/v1/jobs", params=params))
            yield from page.data
            if not page.has_more or not page.data:
                return
            after = page.data[-1].id

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        poll: float = 1.0,
        on_update: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll the job until it succeeded, failed or was cancelled, and return it (whatever
        the ending: look at `status` and `error`). `on_update(job)` sees every poll. Past
        `timeout` seconds a WaitTimeout is raised; the job goes on.

        Once the job has been seen, an outage of the service (a 503 while its database is down,
        no answer at all) is waited out as the job itself waits it out, after Retry-After, until
        the job ends or `timeout` passes. Before that it is raised: a wrong URL fails at once."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job: Job | None = None
        while True:
            outage: ClientError | None = None
            try:
                answer = self._s.api("GET", f"/v1/jobs/{job_id}", deadline=deadline)
            except ClientError as e:
                if job is None or not retryable(e):
                    raise
                outage, pause = e, (e.retry_after if isinstance(e, ApiError) else None) or poll
            else:
                job = Job.model_validate(answer)
                if on_update is not None:
                    on_update(job)
                if job.finished:
                    return job
                pause = poll
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(job, timeout or 0.0, outage) from outage
                pause = min(pause, left)
            self._s.sleep(pause)

    def download(self, job_id: str, dest: str | os.PathLike[str]) -> Path:
        """Fetch every file of a succeeded job's export into `dest` (made if missing) and check
        each one's size and sha256 against the manifest; returns `dest`.

        The files land in a hidden folder inside `dest` first and are moved in only once all of
        them are verified: a mismatch (IntegrityError) or any failure leaves no partial file."""
        artifacts = self.artifacts(job_id)
        folder = Path(dest)
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".blockprune-download-", dir=folder))
        try:
            for f in artifacts.files:
                path = staging / _relative(f.name)
                path.parent.mkdir(parents=True, exist_ok=True)
                size, sha256 = self._s.fetch(f.url, f.name, path)
                if size != f.size:
                    raise IntegrityError(f.name, "size", f.size, size)
                if sha256 != f.sha256:
                    raise IntegrityError(f.name, "sha256", f.sha256, sha256)
            for f in artifacts.files:
                target = folder / _relative(f.name)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / _relative(f.name), target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder


def _relative(name: str) -> PurePosixPath:
    """A manifest's file name (a path inside the export) that cannot leave the folder."""
    path = PurePosixPath(name)
    if not path.parts or path.is_absolute() or "\\" in name or ".." in path.parts:
        raise ClientError(f"the manifest names a file outside the export: {name!r}")
    return path
