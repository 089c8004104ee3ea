"""The sweeps: what abandoned uploads and unsuccessful jobs hold in S3, given back.

**Ended jobs.** A cancelled or failed job keeps nothing under its prefix (jobs/<id>/): only a
succeeded job has a manifest (worker.uploads), and what a stopped upload had put, objects and
open multipart uploads, is deleted. The worker that was uploading sweeps the job itself once it
has stopped (`sweep_job`); `sweep_ended_jobs` catches the rest (a worker killed mid-upload, a
job cancelled by the reaper, S3 down at the time), for jobs ended more than two leases ago, when
any worker that still wrote there has found its lease lost and stopped.

**Uploads.**

A pending upload whose tenant never completed it keeps its multipart uploads open (S3 keeps and
bills their parts) and counts against the tenant's pending quotas. After `upload_ttl_s` (at
least the URLs' lifetime, so no client is still writing) the sweep aborts its multipart uploads,
deletes its objects and its row. Multipart uploads under uploads/ that no row knows (an API
process that died between S3 and its commit) are aborted after the same time.

Both run in the reaper's thread every `upload_sweep_interval_s`; rows are taken with SKIP
LOCKED, so reapers on every worker share the work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import func

from contract import JobStatus
from service import jobstore, uploadstore
from service.db import transaction
from service.settings import Settings
from service.storage import UPLOADS_PREFIX, job_prefix, s3_client, upload_prefix
from service.tables import Job

log = logging.getLogger(__name__)


@dataclass
class Swept:
    uploads: int = 0  # pending rows deleted, with their objects
    multipart: int = 0  # multipart uploads aborted


def sweep_uploads(settings: Settings, s3: Any | None = None) -> Swept:
    """One pass over the pending uploads older than `upload_ttl_s`, then over S3's multipart
    uploads under uploads/ as old."""
    s3 = s3 if s3 is not None else s3_client(settings)
    swept, bucket = Swept(), settings.s3_bucket
    with transaction() as session:
        for upload in uploadstore.abandoned(session, settings.upload_ttl_s):
            for f in upload.files:
                if "multipart_id" in f:
                    key = upload_prefix(upload.tenant_id, upload.id) + f["name"]
                    _abort(s3, bucket, key, f["multipart_id"])
                    swept.multipart += 1
            _delete_prefix(s3, bucket, upload_prefix(upload.tenant_id, upload.id))
            session.delete(upload)
            swept.uploads += 1
    cutoff = datetime.now(timezone.utc) - timedelta(seconds=settings.upload_ttl_s)
    swept.multipart += _abort_under(s3, bucket, UPLOADS_PREFIX, initiated_before=cutoff)
    if swept.uploads or swept.multipart:
        log.info(
            "upload sweep: %d abandoned uploads, %d multipart uploads",
            swept.uploads,
            swept.multipart,
        )
    return swept


def sweep_job(settings: Settings, job_id: str, s3: Any | None = None) -> None:
    """Empty job `job_id`'s prefix now if it ended cancelled or failed: called by the worker
    that uploaded for it, once stopped. Best effort: `sweep_ended_jobs` retries what fails."""
    try:
        with transaction() as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is None or job.status not in jobstore.UNSUCCESSFUL_ENDS:
                return
            _empty_job_prefix(s3 or s3_client(settings), settings.s3_bucket, job)
    except Exception:  # S3 or the database away
        log.warning("could not sweep job %s now; the periodic sweep will", job_id, exc_info=True)


def sweep_ended_jobs(settings: Settings, s3: Any | None = None) -> int:
    """One pass over the cancelled and failed jobs not swept yet; returns how many it swept."""
    s3 = s3 if s3 is not None else s3_client(settings)
    with transaction() as session:
        jobs = jobstore.ended_unswept(session, 2 * settings.lease_s)
        for job in jobs:
            _empty_job_prefix(s3, settings.s3_bucket, job)
    if jobs:
        log.info("export sweep: %d cancelled or failed jobs", len(jobs))
    return len(jobs)


def _empty_job_prefix(s3: Any, bucket: str, job: Job) -> None:
    assert JobStatus(job.status).terminal and job.status != JobStatus.SUCCEEDED
    prefix = job_prefix(job.id)
    _abort_under(s3, bucket, prefix)
    _delete_prefix(s3, bucket, prefix)
    job.export_swept_at = func.now()


def _abort_under(
    s3: Any, bucket: str, prefix: str, initiated_before: datetime | None = None
) -> int:
    """Abort the multipart uploads under `prefix` (those begun before `initiated_before`, if
    given); returns how many."""
    aborted = 0
    pages = s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        for mp in page.get("Uploads", []):
            if initiated_before is None or mp["Initiated"] < initiated_before:
                _abort(s3, bucket, mp["Key"], mp["UploadId"])
                aborted += 1
    return aborted


def _abort(s3: Any, bucket: str, key: str, upload_id: str) -> None:
    try:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except s3.exceptions.ClientError as e:
        if e.response.get("Error", {}).get("Code") not in ("NoSuchUpload", "404"):
            raise  # gone already is what we wanted


def _delete_prefix(s3: Any, bucket: str, prefix: str) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
