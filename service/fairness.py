"""Which queued work a worker takes first: a started job's work items, then jobs taken
round-robin over tenants.

The queue (Redis, through Celery) has priority levels 0 to 9, and a worker takes the oldest
message of the lowest level first. Levels are decided when the outbox relay sends a message:
  - a work item of a fanned-out job (a share of an iteration, its export) goes at level 0: a
    started job's next shares do not wait behind every job submitted since it started;
  - a job goes at level 1 + its rank among its tenant's unfinished jobs (queued, running or
    cancelling, submitted before it), capped at 9. Each tenant's first job comes before any
    tenant's second, and so on: one tenant's burst of 20 jobs holds another tenant's one job
    back by at most one job of each tenant ahead of it, not by the whole burst. Past rank 8 a
    tenant's jobs are first in, first out among themselves. A job re-queued after a crash is
    ranked again by what its tenant has unfinished then.
`queue_fairness=false` sends everything at level 0: one FIFO, as before this module.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from contract import JobStatus
from service.tables import Job

LEVELS = 10  # Celery's priority_steps for Redis: 0 (first) to 9
ITEM_LEVEL = 0
FIRST_JOB_LEVEL, LAST_JOB_LEVEL = 1, LEVELS - 1
UNFINISHED = tuple(s.value for s in JobStatus if not s.terminal)


def level(session: Session, kind: str, ref: str, fair: bool = True) -> int:
    """The priority level of the message "run `kind` `ref`" (service.queue.send)."""
    if not fair or kind != "job":
        return ITEM_LEVEL
    job = session.get(Job, ref)
    if job is None:
        return FIRST_JOB_LEVEL
    ahead = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.tenant_id == job.tenant_id, Job.seq < job.seq, Job.status.in_(UNFINISHED))
    )
    return min(LAST_JOB_LEVEL, FIRST_JOB_LEVEL + int(ahead or 0))
