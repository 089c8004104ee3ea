"""Job rows in PostgreSQL: create, read, list and history. No status rules live here: every
status change goes through service.transitions; the worker's fenced writes through
worker.leases."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from contract import JobSpec, JobStatus
from service.tables import Job, JobEvent, Tenant


class IdempotencyConflict(Exception):
    """The Idempotency-Key was already used with a different request body."""


class QuotaExceeded(Exception):
    """The tenant already has its maximum of queued and running jobs."""


class UnknownCursor(Exception):
    """`after` names no job of this tenant."""


def add_event(session: Session, job_id: str, kind: str, **data: Any) -> None:
    session.add(JobEvent(job_id=job_id, kind=kind, data=data))


def create_job(
    session: Session,
    *,
    tenant_id: str,
    spec: JobSpec,
    user_metadata: dict[str, str],
    webhook_url: str | None,
    idempotency_key: str | None,
    request_hash: str,
    max_attempts: int,
    parallelism: int = 1,
    max_active: int | None = None,
) -> tuple[Job, bool]:
    """Insert a queued job; with an idempotency key already used for the same request, return
    that job instead (created=False). With `max_active`, refuse (QuotaExceeded) a tenant that
    already has that many queued and running jobs; a replay is never refused."""
    if idempotency_key is not None:
        existing = _by_idempotency_key(session, tenant_id, idempotency_key)
        if existing is not None:
            return _replayed(existing, request_hash), False
    if max_active is not None:
        # The tenant's row lock makes concurrent submits count one after the other.
        session.get(Tenant, tenant_id, with_for_update=True)
        if active_jobs(session, tenant_id) >= max_active:
            raise QuotaExceeded(max_active)
    job = Job(
        id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        status=JobStatus.QUEUED.value,
        spec=spec.model_dump(mode="json"),
        config_hash=spec.config_hash(),
        user_metadata=user_metadata,
        webhook_url=webhook_url,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        max_attempts=max_attempts,
        parallelism=parallelism,
        attempts=0,
        cancel_requested=False,
        enqueued_at=func.now(),
    )
    try:
        with session.begin_nested():  # a concurrent retry with the same key may win the insert
            session.add(job)
            session.flush()
    except IntegrityError:
        existing = _by_idempotency_key(session, tenant_id, idempotency_key or "")
        if existing is None:
            raise
        return _replayed(existing, request_hash), False
    add_event(session, job.id, "created", status=JobStatus.QUEUED.value)
    session.flush()
    session.refresh(job)
    return job, True


def active_jobs(session: Session, tenant_id: str) -> int:
    """The tenant's queued and running jobs."""
    active = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
    query = select(func.count()).where(Job.tenant_id == tenant_id, Job.status.in_(active))
    return session.scalar(query) or 0


def _by_idempotency_key(session: Session, tenant_id: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))


def _replayed(job: Job, request_hash: str) -> Job:
    if job.request_hash != request_hash:
        raise IdempotencyConflict(job.id)
    return job


def get_job(session: Session, tenant_id: str, job_id: str, *, lock: bool = False) -> Job | None:
    query = select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id)
    return session.scalar(query.with_for_update() if lock else query)


def list_jobs(
    session: Session,
    tenant_id: str,
    *,
    limit: int,
    after: str | None,
    status: JobStatus | None,
) -> tuple[list[Job], bool]:
    """Newest first; `after` is the last job id of the previous page."""
    query = select(Job).where(Job.tenant_id == tenant_id)
    if after is not None:
        cursor = session.scalar(select(Job.seq).where(Job.id == after, Job.tenant_id == tenant_id))
        if cursor is None:
            raise UnknownCursor(after)
        query = query.where(Job.seq < cursor)
    if status is not None:
        query = query.where(Job.status == status.value)
    jobs = list(session.scalars(query.order_by(Job.seq.desc()).limit(limit + 1)))
    return jobs[:limit], len(jobs) > limit


def list_events(session: Session, job_id: str) -> list[JobEvent]:
    return list(
        session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
    )


UNSUCCESSFUL_ENDS = (JobStatus.CANCELLED.value, JobStatus.FAILED.value)


def ended_unswept(session: Session, older_than_s: float, limit: int = 100) -> list[Job]:
    """Cancelled and failed jobs, ended more than `older_than_s` ago, whose prefix the sweep
    has not emptied yet; locked (SKIP LOCKED: one sweeper takes each)."""
    query = (
        select(Job)
        .where(
            Job.status.in_(UNSUCCESSFUL_ENDS),
            Job.export_swept_at.is_(None),
            Job.finished_at < func.now() - timedelta(seconds=older_than_s),
        )
        .order_by(Job.finished_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.scalars(query))
