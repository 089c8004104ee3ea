"""A job's status machine and phases: the one table of legal status changes.

    queued ──> running ──> succeeded
      │  ^        │  └──> cancelling ──> cancelled (or succeeded/failed, if it ends first)
      │  └────────┤ (retry: a crash, a lost lease, a time limit)
      └──> cancelled / failed (cancelled while queued; attempts exhausted at claim)

Every status change in the service goes through `check_transition` (service.transitions calls
it), so an illegal change is refused wherever it comes from.
"""

from __future__ import annotations

from enum import Enum


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return not TRANSITIONS[self]

    @property
    def leased(self) -> bool:
        """A worker holds the job (a lease with an expiry) in this status."""
        return self in (JobStatus.RUNNING, JobStatus.CANCELLING)


TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.QUEUED,
            JobStatus.CANCELLING,
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
        }
    ),
    # A cancel that arrives after the last check still loses to a finished upload or an error.
    JobStatus.CANCELLING: frozenset({JobStatus.CANCELLED, JobStatus.SUCCEEDED, JobStatus.FAILED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}
TERMINAL_STATUSES = tuple(s for s in JobStatus if s.terminal)
LEASED_STATUSES = tuple(s for s in JobStatus if s.leased)


class IllegalTransition(RuntimeError):
    """A status change the table does not allow: a bug in the caller, never a user's error."""


def check_transition(current: JobStatus | str, new: JobStatus | str) -> JobStatus:
    """Return `new` as a JobStatus if `current -> new` is legal; raise IllegalTransition if not."""
    current, new = JobStatus(current), JobStatus(new)
    if new not in TRANSITIONS[current]:
        allowed = ", ".join(s.value for s in sorted(TRANSITIONS[current])) or "nothing"
        raise IllegalTransition(f"{current.value} -> {new.value} (from {current.value}: {allowed})")
    return new


class Phase(str, Enum):
    """What a running job is doing, in the order a job goes through them."""

    LOADING = "loading"
    CALIBRATING = "calibrating"
    SEARCHING = "searching"
    EVALUATING = "evaluating"  # only a job that asks for an evaluation
    EXPORTING = "exporting"
    UPLOADING = "uploading"
