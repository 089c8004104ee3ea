"""A worker's hold on a job: claimed with FOR UPDATE SKIP LOCKED, renewed by a heartbeat, and
checked by every write.

Each write locks the job row *with the worker's lease token in the WHERE clause*; a worker whose
lease was taken over (it stalled, the reaper re-queued the job, another worker claimed it) finds
no row, gets `LeaseLost` and stops without writing anything. Every write also extends the lease.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.db import transaction
from worker.jobstore import add_event, finish, set_status
from worker.models import TERMINAL_STATUSES, Job


class LeaseLost(Exception):
    """Another worker (or the reaper) owns this job now; stop and write nothing."""


@dataclass
class Lease:
    job_id: str
    token: str
    owner: str
    lease_s: float
    attempt: int
    spec: dict
    state: dict | None  # the last checkpoint, to resume from

    # ---- claiming -----------------------------------------------------------------------------
    @classmethod
    def claim(cls, job_id: str, owner: str, lease_s: float) -> Lease | None:
        """Take the job if nobody holds a live lease on it; None when there is nothing to do
        (finished, held by another worker, cancelled, or out of attempts: those two are
        finalised here)."""
        with transaction() as s:
            job = s.scalar(select(Job).where(Job.id == job_id).with_for_update(skip_locked=True))
            if job is None or job.status in TERMINAL_STATUSES:
                return None
            now: datetime = s.execute(select(func.now())).scalar_one()
            if job.lease_expires_at is not None and job.lease_expires_at > now:
                return None
            if job.cancel_requested:
                finish(s, job, "cancelled", reason="cancel requested while no worker held it")
                return None
            if job.attempts >= job.max_attempts:
                error = {
                    "code": "attempts_exhausted",
                    "message": f"gave up after {job.attempts} attempts (max_attempts)",
                }
                finish(s, job, "failed", error=error)
                return None
            token = str(uuid.uuid4())
            job.attempts += 1
            job.lease_token, job.lease_owner = token, owner
            job.lease_expires_at = now + timedelta(seconds=lease_s)
            job.started_at = job.started_at or now
            set_status(s, job, "running", attempt=job.attempts, worker=owner)
            return cls(job.id, token, owner, lease_s, job.attempts, dict(job.spec), job.state)

    # ---- fenced writes ------------------------------------------------------------------------
    def _locked(self, s: Session) -> Job:
        job = s.scalar(
            select(Job)
            .where(Job.id == self.job_id, Job.lease_token == self.token)
            .with_for_update()
        )
        if job is None:
            raise LeaseLost(self.job_id)
        job.lease_expires_at = func.now() + timedelta(seconds=self.lease_s)
        return job

    def renew(self) -> bool:
        """Extend the lease; returns whether a cancel was requested."""
        with transaction() as s:
            return self._locked(s).cancel_requested

    def set_phase(self, phase: str) -> None:
        with transaction() as s:
            job = self._locked(s)
            job.phase = phase
            add_event(s, self.job_id, "phase", phase=phase)

    def set_progress(self, progress: dict) -> bool:
        with transaction() as s:
            job = self._locked(s)
            job.progress = progress
            return job.cancel_requested

    def checkpoint(self, state: dict, progress: dict) -> bool:
        """Commit one finished search iteration: the engine's state, the progress and the
        iteration's event, in one transaction. Returns whether a cancel was requested."""
        with transaction() as s:
            job = self._locked(s)
            job.state, job.progress = state, progress
            last = state["removed"][-1] if state.get("removed") else {}
            add_event(s, self.job_id, "iteration", iteration=state.get("iteration"), **last)
            return job.cancel_requested

    def succeed(self, state: dict, artifacts: list[dict[str, Any]], progress: dict) -> None:
        with transaction() as s:
            job = self._locked(s)
            job.state, job.artifacts, job.progress = state, artifacts, progress
            add_event(s, self.job_id, "uploaded", files=len(artifacts))
            finish(s, job, "succeeded")

    def fail(self, error: dict) -> None:
        with transaction() as s:
            finish(s, self._locked(s), "failed", error=error)

    def cancel(self) -> None:
        with transaction() as s:
            finish(s, self._locked(s), "cancelled", reason="stopped at a checkpoint")

    def release(self, reason: str, error: dict) -> bool:
        """Give the job back after a failure that may pass (a crash, a time limit): queued
        again, resuming from its checkpoint, while attempts remain; failed otherwise.
        Returns whether it was re-queued (the caller then enqueues it)."""
        with transaction() as s:
            job = self._locked(s)
            if job.cancel_requested:
                finish(s, job, "cancelled", reason=f"cancel requested; stopped by {reason}")
                return False
            if job.attempts >= job.max_attempts:
                finish(s, job, "failed", error=error)
                return False
            add_event(s, job.id, "retry", reason=reason, attempt=job.attempts, **error)
            set_status(s, job, "queued")
            job.phase = None
            job.lease_token = job.lease_owner = job.lease_expires_at = None
            job.enqueued_at = func.now()
            return True
