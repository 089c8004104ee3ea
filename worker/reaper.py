"""The reaper: re-queues jobs whose worker died, re-sends lost queue messages, sends webhooks.

It runs as a thread in every `blockprune worker` (and alone as `blockprune reaper`). Rows are
taken with FOR UPDATE SKIP LOCKED, so any number of reapers can run at once.
With the default settings (60 s lease, 10 s interval) a dead worker's job is re-queued within
about 70 s of its last heartbeat.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from contract import LEASED_STATUSES, JobStatus
from service import queue, transitions
from service.db import transaction
from service.jobstore import add_event
from service.settings import Settings
from service.tables import Job, WorkItem
from worker.webhooks import WebhookSender, deliver_due

log = logging.getLogger(__name__)
BATCH = 100
Enqueue = Callable[[str], None]


def reap_once(
    settings: Settings,
    enqueue: Enqueue = queue.enqueue,
    enqueue_item: Callable[[int], None] = queue.enqueue_item,
    webhooks: WebhookSender | None = None,
) -> list[str]:
    """One pass; returns the ids of the jobs it enqueued (with `enqueue`). Due webhooks go to
    `webhooks`, which sends them in its own threads; without one, they are sent before this
    returns (`blockprune reaper --once`)."""
    to_enqueue: list[str] = []
    with transaction() as s:
        expired = s.scalars(
            select(Job)
            .where(
                Job.status.in_([status.value for status in LEASED_STATUSES]),
                Job.lease_expires_at < func.now(),
            )
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        )
        for job in expired:
            if transitions.end_of_attempt(s, job, "lease_expired"):
                to_enqueue.append(job.id)
        waited_since = func.now() - timedelta(seconds=settings.queued_requeue_after_s)
        stale = s.scalars(
            select(Job)
            .where(Job.status == JobStatus.QUEUED.value, Job.enqueued_at < waited_since)
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        )
        for job in stale:
            transitions.mark_enqueued(job)  # checked now: the next check waits anew
            if queue.message_waiting("job", job.id):
                continue  # its message waits behind others: sending another only adds to them
            # its message was lost (Redis restarted empty, the send failed): send again
            add_event(s, job.id, "requeued", reason="queued_too_long")
            to_enqueue.append(job.id)
        items = _reap_items(s, waited_since)
    for job_id in to_enqueue:
        enqueue(job_id)
    for item_id in items:
        enqueue_item(item_id)
    if webhooks is not None:
        webhooks.submit_due()
    else:
        deliver_due(settings)
    return to_enqueue


def _reap_items(s: Session, waited_since) -> list[int]:
    """Work items of fanned-out jobs, as jobs: an expired lease puts the item back in the queue
    (its claim counts the attempts), a message that waited too long is sent again."""
    expired = s.scalars(
        select(WorkItem)
        .where(WorkItem.status == "running", WorkItem.lease_expires_at < func.now())
        .limit(BATCH)
        .with_for_update(skip_locked=True)
    )
    resend = []
    for item in expired:
        add_event(
            s, item.job_id, "retry", reason="lease_expired", item=item.id, worker=item.lease_owner
        )
        item.status, item.lease_token, item.enqueued_at = "queued", None, func.now()
        resend.append(item.id)
    stale = s.scalars(
        select(WorkItem)
        .where(WorkItem.status == "queued", WorkItem.enqueued_at < waited_since)
        .limit(BATCH)
        .with_for_update(skip_locked=True)
    )
    for item in stale:
        item.enqueued_at = func.now()
        if not queue.message_waiting("item", str(item.id)):
            resend.append(item.id)
    return resend


class ReaperThread(threading.Thread):
    def __init__(self, settings: Settings) -> None:
        super().__init__(name="blockprune-reaper", daemon=True)
        self.settings = settings
        self._stopped = threading.Event()

    def run(self) -> None:
        webhooks = WebhookSender(self.settings)  # a slow receiver holds its threads, not ours
        try:
            while not self._stopped.wait(self.settings.reaper_interval_s):
                try:
                    reap_once(self.settings, webhooks=webhooks)
                except Exception:  # a database or broker blip: try again next round
                    log.exception("reaper pass failed")
        finally:
            webhooks.close()

    def stop(self) -> None:
        self._stopped.set()
