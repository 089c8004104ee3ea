"""Job rows as the API and the reaper see them: create, read, list, cancel, finish, history.

Writes by the worker that holds a job's lease go through `worker.leases` instead, which fences
each of them with the lease token.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from worker.models import Job, JobEvent, WebhookDelivery


class IdempotencyConflict(Exception):
    """The Idempotency-Key was already used with a different request body."""


class UnknownCursor(Exception):
    """`after` names no job of this tenant."""


def add_event(session: Session, job_id: str, kind: str, **data: Any) -> None:
    session.add(JobEvent(job_id=job_id, kind=kind, data=data))


def set_status(session: Session, job: Job, status: str, **event_data: Any) -> None:
    add_event(session, job.id, "status", **{"from": job.status, "to": status}, **event_data)
    job.status = status


def create_job(
    session: Session,
    *,
    tenant_id: str,
    spec: dict,
    config_hash: str,
    metadata: dict[str, str],
    webhook_url: str | None,
    idempotency_key: str | None,
    request_hash: str,
    max_attempts: int,
) -> tuple[Job, bool]:
    """Insert a queued job; with an idempotency key already used for the same request, return
    that job instead (created=False)."""
    if idempotency_key is not None:
        existing = _by_idempotency_key(session, tenant_id, idempotency_key)
        if existing is not None:
            return _replayed(existing, request_hash), False
    job = Job(
        id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        status="queued",
        spec=spec,
        config_hash=config_hash,
        meta=metadata,
        webhook_url=webhook_url,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        max_attempts=max_attempts,
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
    add_event(session, job.id, "created", status="queued")
    session.flush()
    session.refresh(job)
    return job, True


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
    session: Session, tenant_id: str, *, limit: int, after: str | None, status: str | None
) -> tuple[list[Job], bool]:
    """Newest first; `after` is the last job id of the previous page."""
    query = select(Job).where(Job.tenant_id == tenant_id)
    if after is not None:
        cursor = session.scalar(select(Job.seq).where(Job.id == after, Job.tenant_id == tenant_id))
        if cursor is None:
            raise UnknownCursor(after)
        query = query.where(Job.seq < cursor)
    if status is not None:
        query = query.where(Job.status == status)
    jobs = list(session.scalars(query.order_by(Job.seq.desc()).limit(limit + 1)))
    return jobs[:limit], len(jobs) > limit


def list_events(session: Session, job_id: str) -> list[JobEvent]:
    return list(
        session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
    )


def request_cancel(session: Session, job: Job) -> None:
    """Queued: cancelled now. Running: `cancelling` until the worker stops at its next check.
    Already cancelling or cancelled: nothing to do. The row must be locked by the caller."""
    if job.status == "queued":
        finish(session, job, "cancelled", reason="cancelled while queued")
    elif job.status == "running":
        job.cancel_requested = True
        set_status(session, job, "cancelling")


def finish(
    session: Session,
    job: Job,
    status: str,
    *,
    error: dict | None = None,
    reason: str | None = None,
) -> None:
    """Put `job` in a final state, drop its lease and queue its webhook, in the caller's
    transaction (so the webhook goes out if and only if this state is committed)."""
    extra = {"reason": reason} if reason else {}
    if error is not None:
        job.error = error
        add_event(session, job.id, "error", **error)
    set_status(session, job, status, **extra)
    job.phase = None
    job.finished_at = func.now()
    job.lease_token = job.lease_owner = job.lease_expires_at = None
    if job.webhook_url:
        session.add(
            WebhookDelivery(job_id=job.id, url=job.webhook_url, payload=webhook_payload(job))
        )


def webhook_payload(job: Job) -> dict:
    removed = (job.state or {}).get("removed", [])
    return {
        "id": f"evt_{uuid.uuid4().hex}",
        "type": f"job.{job.status}",
        "created_at": datetime.now(timezone.utc).isoformat(),
        "data": {
            "id": job.id,
            "status": job.status,
            "error": job.error,
            "removed": removed,
            "metadata": job.meta,
        },
    }
