"""The transactional outbox: a queue message is a row written in the same transaction as the
change that calls for it (a job created or re-queued, a work item made), and a relay sends it.

So a committed job always has its message on the way, whether or not the broker is up when it
is committed, and nobody waits on the broker to commit: `POST /v1/jobs` answers in
milliseconds while Redis is down, and the job runs once Redis is back. The relay runs in every
API and worker process (rows are taken FOR UPDATE SKIP LOCKED). A send that fails is retried
with backoff, the job stays queued with a "retry" event naming the broker, and a job whose
message could not be sent within `broker_outage_budget_s` fails with dependency_unavailable.

Each message carries a task id made from its row (`job-<id>-<row>`): a row sent but not deleted
(the relay died between the two) is sent again with the same id, and the receiving worker drops
the duplicate (service.queue.first_receipt).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from contract import ErrorCode, JobStatus
from service import fairness, queue, transitions
from service.backoff import backoff_s, worth_an_event
from service.db import transaction
from service.jobstore import add_event
from service.settings import Settings
from service.tables import Job, OutboxMessage, WorkItem

log = logging.getLogger(__name__)
BATCH = 100
Send = Callable[[str, str, str, int], None]  # kind, ref, task id, priority level


def add(session: Session, kind: str, ref: str | int, delay_s: float = 0.0) -> None:
    """Ask for "run job / work item `ref`" to be sent once this transaction commits (and
    `delay_s` seconds have passed: a retry's pause)."""
    row = OutboxMessage(kind=kind, ref=str(ref))
    if delay_s > 0:
        row.send_after = func.now() + timedelta(seconds=delay_s)
    session.add(row)


def pending(session: Session, kind: str, ref: str | int) -> bool:
    """Whether a message for this job or item waits in the outbox (not sent yet)."""
    query = select(OutboxMessage.id).where(
        OutboxMessage.kind == kind, OutboxMessage.ref == str(ref)
    )
    return session.scalar(query.limit(1)) is not None


def task_id(row: OutboxMessage) -> str:
    return f"{row.kind}-{row.ref}-{row.id}"


def relay_once(settings: Settings, send: Send | None = None, wait_s: float = 0.0) -> int:
    """Send the due messages (with `send`, else service.queue.send); returns how many were
    sent. The first failure ends the pass (the broker is down: the others would fail the same
    way, each after its timeouts). Rows another relay holds are skipped, or with `wait_s`
    waited for that long (then they are sent, by it or by this pass)."""
    send = send or queue.send
    sent = 0
    with transaction() as s:
        query = (
            select(OutboxMessage)
            .where(OutboxMessage.send_after <= func.now())
            .order_by(OutboxMessage.id)
            .limit(BATCH)
        )
        if wait_s > 0:
            s.execute(text(f"SET LOCAL lock_timeout = '{int(wait_s * 1000)}ms'"))
            rows = s.scalars(query.with_for_update())
        else:
            rows = s.scalars(query.with_for_update(skip_locked=True))
        for row in rows:
            level = fairness.level(s, row.kind, row.ref, settings.queue_fairness)
            try:
                send(row.kind, row.ref, task_id(row), level)
            except Exception as e:  # kombu, redis, socket errors: all mean "not sent"
                _not_sent(s, settings, row, e)
                break
            s.delete(row)
            sent += 1
    return sent


FLUSH_WAIT_S = 2.0


def flush(settings: Settings) -> None:
    """Best effort, right after a commit that added messages: send them now rather than at the
    next poll of a relay thread (a worker's pool process has none of its own). A worker calls
    it before its task returns, and waits for rows another relay is sending: when it takes its
    next message, what its task queued (a fanned-out job's shares) is in the queue already, so
    the priorities (service.fairness) can put it first."""
    try:
        relay_once(settings, wait_s=FLUSH_WAIT_S)
    except Exception as e:  # the relay threads will
        log.warning("could not flush the outbox now (%s); a relay will send it", e)


def _not_sent(s: Session, settings: Settings, row: OutboxMessage, error: Exception) -> None:
    row.attempts += 1
    row.last_error = f"{type(error).__name__}: {error}"[:500]
    log.warning("could not send %s %s (try %d): %s", row.kind, row.ref, row.attempts, error)
    waited = s.scalar(select(func.extract("epoch", func.now() - row.created_at))) or 0.0
    job = _job_of(s, row)
    if (
        job is not None
        and job.status == JobStatus.QUEUED
        and waited > settings.broker_outage_budget_s
    ):
        message = (
            f"the queue (broker) stayed unreachable for {waited:.0f} s, longer than this "
            f"service's budget of {settings.broker_outage_budget_s:.0f} s "
            f"(BLOCKPRUNE_BROKER_OUTAGE_BUDGET_S); submit the job again"
        )
        error_body = {"code": ErrorCode.DEPENDENCY_UNAVAILABLE.value, "message": message}
        transitions.finish(s, job, JobStatus.FAILED, error=error_body)
        s.delete(row)
        return
    wait = backoff_s(row.attempts, settings.outage_backoff_base_s, settings.outage_backoff_max_s)
    row.send_after = func.now() + timedelta(seconds=wait)
    if job is not None and worth_an_event(row.attempts):
        add_event(
            s,
            job.id,
            "retry",
            reason="broker_unavailable",
            waiting_for="broker",
            tries=row.attempts,
            waited_s=round(float(waited), 1),
            next_try_in_s=round(wait, 1),
        )


def _job_of(s: Session, row: OutboxMessage) -> Job | None:
    """The job a message is for: its own, or its work item's (a fanned-out job's share waits
    on the broker too, and its events say so)."""
    if row.kind == "item":
        job_id = s.scalar(select(WorkItem.job_id).where(WorkItem.id == int(row.ref)))
        return s.get(Job, job_id) if job_id is not None else None
    return s.get(Job, row.ref, with_for_update=True)


class Relay(threading.Thread):
    """Sends the outbox every `outbox_poll_s`, or at once when `kick()`ed (after a commit that
    added a message in this process)."""

    def __init__(self, settings: Settings, send: Send | None = None) -> None:
        super().__init__(name="blockprune-outbox-relay", daemon=True)
        self.settings, self.send = settings, send
        self._wake, self._stopped = threading.Event(), threading.Event()

    def kick(self) -> None:
        self._wake.set()

    def run(self) -> None:
        failing = False  # said once when the database goes away, once when it is back
        while not self._stopped.is_set():
            try:
                while relay_once(self.settings, self.send) == BATCH:
                    pass  # a backlog: keep going
                if failing:
                    log.warning("outbox relay: the database is back")
                failing = False
            except Exception as e:  # the database is down: try again at the next poll
                if not failing:
                    log.warning("outbox relay: cannot read the outbox (%s); retrying", e)
                failing = True
            self._wake.wait(self.settings.outbox_poll_s)
            self._wake.clear()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
