"""The status machines applied to rows: every status change of the service is made here.

contract.status holds the tables of legal changes; `set_status` checks each change of a job
against its table, records a `status` event, and is the only code that assigns `Job.status`;
`set_item_status` does the same for a fanned-out job's work items (`WorkItem.status`), with
the lease fields each status implies. The callers (the
cancel route, worker.leases, worker.reaper) say what happened; this module decides what the
job becomes. Every function runs in its caller's transaction, on a row the caller has locked.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func
from sqlalchemy.orm import Session

from contract import ErrorCode, ItemStatus, JobStatus, check_transition
from service.jobstore import add_event
from service.tables import Job, WorkItem
from service.webhook_outbox import queue_webhook


def set_status(session: Session, job: Job, status: JobStatus, **event_data: Any) -> None:
    """Change the job's status if the status machine allows it (IllegalTransition if not)."""
    new = check_transition(job.status, status)
    add_event(session, job.id, "status", **{"from": job.status, "to": new.value}, **event_data)
    job.status = new.value


def start(
    session: Session, job: Job, *, token: str, owner: str, now: datetime, lease_s: float
) -> None:
    """A worker claimed the job: it runs under the worker's lease, as one more attempt."""
    job.attempts += 1
    job.lease_token, job.lease_owner = token, owner
    job.lease_expires_at = now + timedelta(seconds=lease_s)
    job.started_at = job.started_at or now
    set_status(session, job, JobStatus.RUNNING, attempt=job.attempts, worker=worker_id(owner))


def finish(
    session: Session,
    job: Job,
    status: JobStatus,
    *,
    error: dict | None = None,
    reason: str | None = None,
) -> None:
    """Put `job` in a final state, drop its lease and queue its webhook, in the caller's
    transaction (so the webhook goes out if and only if this state is committed)."""
    if not status.terminal:
        raise ValueError(f"finish() takes a final status, not {status.value}")
    if error is not None:
        job.error = error
        add_event(session, job.id, "error", **error)
    set_status(session, job, status, **({"reason": reason} if reason else {}))
    job.phase = None
    job.finished_at = func.now()
    _drop_lease(job)
    if job.webhook_url:
        queue_webhook(session, job)


def request_cancel(session: Session, job: Job) -> None:
    """Queued: cancelled now. Running: `cancelling` until the worker stops at its next check.
    Already cancelling or cancelled: nothing to do."""
    if job.status == JobStatus.QUEUED:
        finish(session, job, JobStatus.CANCELLED, reason="cancelled while queued")
    elif job.status == JobStatus.RUNNING:
        job.cancel_requested = True
        set_status(session, job, JobStatus.CANCELLING)


def end_of_attempt(session: Session, job: Job, reason: str, error: dict | None = None) -> bool:
    """An attempt ended without an outcome (a crash, a lost worker, a time limit), or a job was
    found unclaimable. The one place that decides what comes next:
      - a cancel was requested: cancelled;
      - no attempts left: failed, with the last attempt's `error` or `attempts_exhausted`;
      - otherwise: queued again, to resume from its checkpoint (the caller enqueues it).
    Returns whether the job was re-queued."""
    if job.cancel_requested:
        finish(session, job, JobStatus.CANCELLED, reason=f"cancel requested; stopped by {reason}")
        return False
    if job.attempts >= job.max_attempts:
        exhausted = {
            "code": ErrorCode.ATTEMPTS_EXHAUSTED.value,
            "message": f"gave up after {job.attempts} attempts ({reason}; max_attempts reached)",
        }
        finish(session, job, JobStatus.FAILED, error=error or exhausted)
        return False
    worker = worker_id(job.lease_owner)
    retry = {"reason": reason, "attempt": job.attempts, "worker": worker, **(error or {})}
    add_event(session, job.id, "retry", **retry)
    set_status(session, job, JobStatus.QUEUED)
    job.phase = None
    _drop_lease(job)
    mark_enqueued(job)
    return True


def mark_enqueued(job: Job) -> None:
    """The job's message is (about to be) sent now: the reaper measures waiting from here."""
    job.enqueued_at = func.now()


def _drop_lease(job: Job) -> None:
    job.lease_token = job.lease_owner = job.lease_expires_at = None


def set_item_status(
    item: WorkItem,
    status: ItemStatus,
    *,
    token: str | None = None,
    owner: str | None = None,
    expires_at: datetime | None = None,
) -> None:
    """Change a work item's status if its machine allows it (IllegalTransition if not), with the
    fields that go with it: running is one more attempt under the lease (`token`, `owner`,
    `expires_at`); queued drops the lease and restarts the reaper's wait; done and cancelled
    drop the lease and stamp the end."""
    new = check_transition(item.status, status, ItemStatus)
    item.status = new.value
    if new is ItemStatus.RUNNING:
        item.attempts += 1
        item.lease_token, item.lease_owner, item.lease_expires_at = token, owner, expires_at
        return
    item.lease_token = None
    if new is ItemStatus.QUEUED:
        item.enqueued_at = func.now()
    else:
        item.finished_at = func.now()


def worker_id(owner: str | None) -> str | None:
    """What a tenant may see of a lease owner (a worker's host:pid): an opaque id that tells
    attempts on the same worker apart from those on another, and names no host."""
    if owner is None:
        return None
    return "w-" + hashlib.sha256(owner.encode()).hexdigest()[:10]
