"""A worker's hold on a job or on a work item of a fanned-out job: claimed with FOR UPDATE SKIP
LOCKED, renewed by a heartbeat, and checked by every write.

Both are a `FencedLease`: each write locks the held row *with the worker's lease token in the
WHERE clause*; a worker whose lease was taken over (it stalled, the reaper re-queued the row,
another worker claimed it) finds no row, gets `LeaseLost` and stops without writing anything.
Every write also extends the lease. The writes that act on the job (its phase, an outage's
retry event, success, failure) are the base's, written once; `Lease` (a whole job) and
`worker.items.ItemLease` (a work item) each add how they claim, lock and give back their row.
What the job or item becomes is decided by service.transitions.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from contract import JobSpec, JobStatus, Phase, Progress, SearchState
from contract.fanout_plan import FanoutPlan
from service import fanout, outbox, transitions
from service.backoff import worth_an_event
from service.db import transaction
from service.jobstore import add_event
from service.tables import Job
from worker.metrics import HEARTBEAT_AGE
from worker.outages import Dependency, outlasts_database_outages

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """Another worker (or the reaper) owns this job now; stop and write nothing."""


class CancelRequested(Exception):
    """The user cancelled the job before its export was committed: it ends cancelled."""


class FencedLease:
    """What a job's lease and a work item's lease share: the fenced lock, the heartbeat's renewal
    and the writes that act on the job. A subclass says how it locks its row (`_locked`) and
    what becomes of its row when the job ends (`_on_job_end`)."""

    token: str
    owner: str
    lease_s: float

    def _locked(self, s: Session) -> Job:
        """Lock the held row by its lease token (LeaseLost if it is not held any more), extend
        the lease, and return the job row, locked."""
        raise NotImplementedError

    def _on_job_end(self, s: Session, job: Job, status: JobStatus) -> None:
        """The job just ended with `status` in this transaction (nothing to do for a job)."""

    def renew(self) -> None:
        """Extend the lease (the heartbeat)."""
        with transaction() as s:
            self._locked(s)

    @outlasts_database_outages
    def set_phase(self, phase: Phase) -> None:
        with transaction() as s:
            job = self._locked(s)
            job.phase = phase.value
            add_event(s, job.id, "phase", phase=phase.value)

    @outlasts_database_outages
    def succeed(
        self,
        artifacts: list[dict[str, Any]],
        evaluation: dict[str, Any] | None = None,
        *,
        commit: Callable[[], None],
        state: SearchState | None = None,
        progress: Progress | None = None,
    ) -> None:
        """The export is uploaded: `commit()` writes its manifest and the job succeeds, with
        its files, evaluation and (from a whole-job lease) its final state and progress, in one
        transaction that holds the job's row. A cancel requested before it raises
        CancelRequested and nothing is committed; one requested during it waits for the row
        and finds the job succeeded (worker.uploads)."""
        with transaction() as s:
            job = self._locked(s)
            if job.cancel_requested:
                raise CancelRequested(job.id)
            commit()
            if state is not None:
                job.state = state.to_json()
            if progress is not None:
                job.progress = progress.model_dump(mode="json")
            job.artifacts, job.evaluation = artifacts, evaluation
            add_event(s, job.id, "uploaded", files=len(artifacts))
            transitions.finish(s, job, JobStatus.SUCCEEDED)
            self._on_job_end(s, job, JobStatus.SUCCEEDED)

    @outlasts_database_outages
    def fail(self, error: dict) -> None:
        with transaction() as s:
            job = self._locked(s)
            transitions.finish(s, job, JobStatus.FAILED, error=error)
            self._on_job_end(s, job, JobStatus.FAILED)

    def note_retry(
        self, dependency: Dependency, tries: int, waited_s: float, wait_s: float, error: Exception
    ) -> None:
        """A "retry" event on the job: it waits out an outage of `dependency` (worker.outages),
        at tries 1, 2, 4, 8... (service.backoff.worth_an_event)."""
        if not worth_an_event(tries):
            return
        with transaction() as s:
            job = self._locked(s)
            add_outage_event(s, job.id, dependency, tries, waited_s, wait_s, error)


@dataclass
class Lease(FencedLease):
    """A whole job, held by one worker."""

    job_id: str
    tenant_id: str
    token: str
    owner: str
    lease_s: float
    attempt: int
    spec: JobSpec
    state: SearchState | None  # the last checkpoint, to resume from
    parallelism: int = 1
    # Seen on the last fenced write: the user asked to cancel (the worker stops at its next check).
    cancel_requested: bool = False

    # ---- claiming -----------------------------------------------------------------------------
    @classmethod
    @outlasts_database_outages
    def claim(cls, job_id: str, owner: str, lease_s: float) -> Lease | None:
        """Take the job if nobody holds a live lease on it; None when there is nothing to do
        (finished, held by another worker, cancelled, or out of attempts: those two are
        finalised here). A job whose worker's lease expired is taken over as a new attempt."""
        with transaction() as s:
            job = s.scalar(select(Job).where(Job.id == job_id).with_for_update(skip_locked=True))
            if job is None or JobStatus(job.status).terminal:
                return None
            now: datetime = s.execute(select(func.now())).scalar_one()
            if JobStatus(job.status).leased:
                if job.plan is not None:
                    return None  # fanned out: its work items carry the leases from here on
                if job.lease_expires_at is not None and job.lease_expires_at > now:
                    return None  # a live worker holds it
                if not transitions.end_of_attempt(s, job, "lease_expired"):
                    return None
            if job.cancel_requested or job.attempts >= job.max_attempts:
                transitions.end_of_attempt(s, job, "claimed")  # cancelled, or failed
                return None
            token = str(uuid.uuid4())
            transitions.start(s, job, token=token, owner=owner, now=now, lease_s=lease_s)
            spec = JobSpec.model_validate(job.spec)
            state = SearchState.from_json(job.state) if job.state else None
            return cls(
                job.id,
                job.tenant_id,
                token,
                owner,
                lease_s,
                job.attempts,
                spec,
                state,
                parallelism=job.parallelism,
            )

    # ---- fenced writes ------------------------------------------------------------------------
    def _locked(self, s: Session) -> Job:
        """The job row, by this lease's token; also reads its cancel flag into the lease."""
        job = s.scalar(
            select(Job)
            .where(Job.id == self.job_id, Job.lease_token == self.token)
            .with_for_update()
        )
        if job is None:
            raise LeaseLost(self.job_id)
        job.lease_expires_at = func.now() + timedelta(seconds=self.lease_s)
        self.cancel_requested = job.cancel_requested
        return job

    @outlasts_database_outages
    def set_progress(self, progress: Progress) -> None:
        with transaction() as s:
            self._locked(s).progress = progress.model_dump(mode="json")

    @outlasts_database_outages
    def checkpoint(self, state: SearchState, progress: Progress) -> None:
        """Commit one finished search iteration: the engine's state, the progress and the
        iteration's event, in one transaction."""
        with transaction() as s:
            job = self._locked(s)
            job.state, job.progress = state.to_json(), progress.model_dump(mode="json")
            last = state.removed[-1].model_dump() if state.removed else {}
            add_event(s, self.job_id, "iteration", iteration=state.blocks_removed, **last)

    @outlasts_database_outages
    def cancel(self, reason: str = "stopped at a checkpoint") -> None:
        with transaction() as s:
            transitions.finish(s, self._locked(s), JobStatus.CANCELLED, reason=reason)

    @outlasts_database_outages
    def start_fanout(self, plan: FanoutPlan) -> None:
        """Store the plan and the first iteration's shares, with their messages; the job's own
        lease ends here (it stays running: its work items are leased from now on)."""
        with transaction() as s:
            job = self._locked(s)
            job.plan = plan.model_dump(mode="json")
            state = SearchState.from_json(job.state) if job.state else SearchState.new(self.spec)
            job.state = state.to_json()
            job.phase = Phase.SEARCHING.value
            add_event(s, self.job_id, "phase", phase=Phase.SEARCHING.value, shares=job.parallelism)
            for item in fanout.add_iteration_items(s, job, state):
                outbox.add(s, "item", item.id)
            job.lease_token = job.lease_owner = job.lease_expires_at = None

    @outlasts_database_outages
    def release(self, reason: str, error: dict, delay_s: float) -> None:
        """Give the job back after a failure that may pass (a crash, a time limit): queued
        again, its message sent after `delay_s`, resuming from its checkpoint, while attempts
        remain; failed otherwise."""
        with transaction() as s:
            if transitions.end_of_attempt(s, self._locked(s), reason, error):
                outbox.add(s, "job", self.job_id, delay_s)


def add_outage_event(
    s: Session,
    job_id: str,
    dependency: Dependency,
    tries: int,
    waited_s: float,
    wait_s: float,
    error: Exception,
) -> None:
    """The "retry" event of a job waiting out an outage. It names the error's type only: its
    message may name internal hosts."""
    add_event(
        s,
        job_id,
        "retry",
        reason=f"{dependency.value}_unavailable",
        waiting_for=dependency.value,
        tries=tries,
        waited_s=round(waited_s, 1),
        next_try_in_s=round(wait_s, 1),
        error=type(error).__name__,
    )


class Heartbeat(threading.Thread):
    """Renews a lease (a job's or a work item's) in the background until stopped. `lost` is set
    when a renewal says the holder must stop: the lease was taken over (LeaseLost), or whatever
    else `stop_on` names. A renewal also reads the job's cancel flag into the lease."""

    def __init__(
        self,
        renew: Callable[[], None],
        name: str,
        interval_s: float,
        stop_on: tuple[type[BaseException], ...] = (LeaseLost,),
    ) -> None:
        super().__init__(name=f"heartbeat {name}", daemon=True)
        self.renew, self.what, self.interval_s, self.stop_on = renew, name, interval_s, stop_on
        self.lost = threading.Event()
        self._stopped = threading.Event()
        self._context = contextvars.copy_context()  # its log lines name the task's job

    def run(self) -> None:
        self._context.run(self._beat)

    def _beat(self) -> None:
        renewed = time.monotonic()
        while not self._stopped.wait(self.interval_s):
            try:
                self.renew()
                renewed = time.monotonic()
            except self.stop_on:
                self.lost.set()
                return
            except Exception:  # a database blip; the lease outlives a few missed beats
                log.exception("heartbeat of %s failed", self.what)
            HEARTBEAT_AGE.set(time.monotonic() - renewed)

    def stop(self) -> None:
        self._stopped.set()
        HEARTBEAT_AGE.set(0)  # no task, no lease to renew
