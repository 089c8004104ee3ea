"""The reaper: re-queues jobs whose worker died, re-sends lost queue messages (through the
outbox), sends webhooks, and now and then sweeps abandoned uploads and what cancelled or failed jobs
left in S3 (worker.sweep).

It runs as a thread in every `blockprune worker` (and alone as `blockprune reaper`). Rows are
taken with FOR UPDATE SKIP LOCKED, so any number of reapers can run at once.
With the default settings (60 s lease, 10 s interval) a dead worker's job is re-queued within
about 70 s of its last heartbeat.

After a pass that failed (the database was down), leases are not judged until a lease's length
has gone by: no worker could renew during the outage, and each gets its chance to renew before
its job is taken for dead (a PostgreSQL restart must not cost every running job an attempt).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import ScalarResult, func, select
from sqlalchemy.orm import Session

from contract import LEASED_STATUSES, ItemStatus, JobStatus
from service import outbox, queue, transitions
from service.db import transaction
from service.jobstore import add_event
from service.settings import Settings
from service.tables import Job, WorkItem
from worker.sweep import sweep_ended_jobs, sweep_uploads
from worker.webhooks import WebhookSender, deliver_due

log = logging.getLogger(__name__)
BATCH = 100
T = TypeVar("T", Job, WorkItem)


def reap_once(
    settings: Settings, webhooks: WebhookSender | None = None, judge_leases: bool = True
) -> list[str]:
    """One pass; returns the ids of the jobs it queued a message for (in the outbox). Due
    webhooks go to `webhooks`, which sends them in its own threads; without one, they are sent
    before this returns (`blockprune reaper --once`). `judge_leases`=False leaves expired
    leases alone (just after a database outage)."""
    to_enqueue: list[str] = []
    with transaction() as s:
        expired = _batch(
            s,
            Job,
            Job.status.in_([status.value for status in LEASED_STATUSES]),
            Job.lease_expires_at < func.now(),
            limit=BATCH if judge_leases else 0,
        )
        for job in expired:
            if transitions.end_of_attempt(s, job, "lease_expired"):
                outbox.add(s, "job", job.id)
                to_enqueue.append(job.id)
        waited_since = func.now() - timedelta(seconds=settings.queued_requeue_after_s)
        stale = _batch(s, Job, Job.status == JobStatus.QUEUED.value, Job.enqueued_at < waited_since)
        for job in stale:
            transitions.mark_enqueued(job)  # checked now: the next check waits anew
            if not _message_lost(s, "job", job.id):
                continue  # its message waits behind others: sending another only adds to them
            add_event(s, job.id, "requeued", reason="queued_too_long")
            outbox.add(s, "job", job.id)
            to_enqueue.append(job.id)
        for item_id in _reap_items(s, waited_since, judge_leases):
            outbox.add(s, "item", item_id)
    if webhooks is not None:
        webhooks.submit_due()
    else:
        deliver_due(settings)
    return to_enqueue


def _batch(s: Session, table: type[T], *where: Any, limit: int = BATCH) -> ScalarResult[T]:
    """Up to `limit` rows of `table` matching `where`, locked; rows another reaper holds are
    skipped, so any number of reapers can run at once."""
    return s.scalars(select(table).where(*where).limit(limit).with_for_update(skip_locked=True))


def _reap_items(s: Session, waited_since, judge_leases: bool) -> list[int]:
    """Work items of fanned-out jobs, as jobs: an expired lease puts the item back in the queue
    (its claim counts the attempts), a message that waited too long is sent again."""
    expired = _batch(
        s,
        WorkItem,
        WorkItem.status == ItemStatus.RUNNING.value,
        WorkItem.lease_expires_at < func.now(),
        limit=BATCH if judge_leases else 0,
    )
    resend = []
    for item in expired:
        add_event(
            s,
            item.job_id,
            "retry",
            reason="lease_expired",
            item=item.id,
            worker=transitions.worker_id(item.lease_owner),
        )
        transitions.set_item_status(item, ItemStatus.QUEUED)
        resend.append(item.id)
    stale = _batch(
        s, WorkItem, WorkItem.status == ItemStatus.QUEUED.value, WorkItem.enqueued_at < waited_since
    )
    for item in stale:
        item.enqueued_at = func.now()
        if _message_lost(s, "item", item.id):
            resend.append(item.id)
    return resend


def _message_lost(s: Session, kind: str, ident: str | int) -> bool:
    """A queued row's message is neither in the outbox nor waiting in the broker: it was lost
    (Redis restarted empty, the send failed), and is sent again."""
    return not (outbox.pending(s, kind, ident) or queue.message_waiting(kind, str(ident)))


class ReaperThread(threading.Thread):
    def __init__(self, settings: Settings) -> None:
        super().__init__(name="blockprune-reaper", daemon=True)
        self.settings = settings
        self._stopped = threading.Event()

    def run(self) -> None:
        webhooks = WebhookSender(self.settings)  # a slow receiver holds its threads, not ours
        judge_from = 0.0  # monotonic time from which expired leases are judged
        # The first sweep waits an interval too: a worker's start is busy enough.
        sweep_at = time.monotonic() + self.settings.upload_sweep_interval_s
        try:
            while not self._stopped.wait(self.settings.reaper_interval_s):
                try:
                    judge = time.monotonic() >= judge_from
                    reap_once(self.settings, webhooks=webhooks, judge_leases=judge)
                    queue.mark_reaper_pass()
                except Exception:  # a database or broker blip: try again next round
                    log.warning("reaper pass failed", exc_info=True)
                    # a lease's length: every live worker renews within it once it is back
                    judge_from = time.monotonic() + self.settings.lease_s
                if time.monotonic() >= sweep_at:
                    sweep_at = time.monotonic() + self.settings.upload_sweep_interval_s
                    for sweep in (sweep_uploads, sweep_ended_jobs):
                        try:
                            sweep(self.settings)
                        except Exception:  # S3 or the database away: the next sweep tries
                            log.warning("%s failed", sweep.__name__, exc_info=True)
        finally:
            webhooks.close()

    def stop(self) -> None:
        self._stopped.set()
