"""The reaper: re-queues jobs whose worker died, re-sends lost queue messages, sends webhooks.

It runs as a thread in every `blockprune worker` (and alone as `blockprune reaper`). Rows are
taken with FOR UPDATE SKIP LOCKED, so any number of reapers can run at once.
With the default settings (60 s lease, 10 s interval) a dead worker's job is re-queued within
about 70 s of its last heartbeat.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import func, select

from worker.db import transaction
from worker.jobstore import add_event, finish, set_status
from worker.models import LEASED_STATUSES, Job
from worker.settings import Settings
from worker.webhooks import deliver_due

log = logging.getLogger(__name__)
BATCH = 100


def reap_once(settings: Settings) -> list[str]:
    """One pass; returns the ids of the jobs it enqueued."""
    to_enqueue: list[str] = []
    with transaction() as s:
        expired = s.scalars(
            select(Job)
            .where(Job.status.in_(LEASED_STATUSES), Job.lease_expires_at < func.now())
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        )
        for job in expired:
            if job.cancel_requested:
                finish(s, job, "cancelled", reason="worker lost while cancelling")
            elif job.attempts >= job.max_attempts:
                message = f"worker lost (lease expired) on attempt {job.attempts}; none left"
                finish(s, job, "failed", error={"code": "attempts_exhausted", "message": message})
            else:
                add_event(
                    s,
                    job.id,
                    "retry",
                    reason="lease_expired",
                    attempt=job.attempts,
                    worker=job.lease_owner,
                )
                set_status(s, job, "queued")
                job.phase = None
                job.lease_token = job.lease_owner = job.lease_expires_at = None
                job.enqueued_at = func.now()
                to_enqueue.append(job.id)
        stale = s.scalars(
            select(Job)
            .where(
                Job.status == "queued",
                Job.enqueued_at < func.now() - timedelta(seconds=settings.queued_requeue_after_s),
            )
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        )
        for job in stale:  # its message was lost (broker flushed, enqueue failed): send again
            add_event(s, job.id, "requeued", reason="queued_too_long")
            job.enqueued_at = func.now()
            to_enqueue.append(job.id)
    from worker.celery_app import enqueue

    for job_id in to_enqueue:
        enqueue(job_id)
    deliver_due(settings)
    return to_enqueue


class ReaperThread(threading.Thread):
    def __init__(self, settings: Settings) -> None:
        super().__init__(name="blockprune-reaper", daemon=True)
        self.settings = settings
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.settings.reaper_interval_s):
            try:
                reap_once(self.settings)
            except Exception:  # a database or broker blip: try again next round
                log.exception("reaper pass failed")

    def stop(self) -> None:
        self._stopped.set()
