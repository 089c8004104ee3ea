"""A job's status machine and phases: the one table of legal status changes.

    queued ──> running ──> succeeded
      │  ^        │  └──> cancelling ──> cancelled (or failed, if it fails first)
      │  └────────┤ (retry: a crash, a lost lease, a time limit)
      └──> cancelled / failed (cancelled while queued; attempts exhausted at claim)

A fanned-out job's work items (service.fanout: a share of an iteration, or the export) have a
machine of their own, `ItemStatus`:

    queued ──> running ──> done
      │  ^        │  └──> running (a worker takes over an item whose lease expired)
      │  └────────┤ (released after a failure that may pass; its lease expired)
      └──> cancelled <┘ (the job was cancelled or ended)

Every status change in the service goes through `check_transition` (service.transitions calls
it, for jobs and for items), so an illegal change is refused wherever it comes from.
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar


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
    # Never succeeded: success is committed with the export's manifest only while no cancel is
    # requested (worker.uploads), and a cancel after that is refused (the job succeeded).
    # A failure met before the cancel's check still ends it failed.
    JobStatus.CANCELLING: frozenset({JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}
TERMINAL_STATUSES = tuple(s for s in JobStatus if s.terminal)
LEASED_STATUSES = tuple(s for s in JobStatus if s.leased)


class ItemStatus(str, Enum):
    """A work item of a fanned-out job: a share of one iteration's candidates, or the export."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return not ITEM_TRANSITIONS[self]


ITEM_TRANSITIONS: dict[ItemStatus, frozenset[ItemStatus]] = {
    ItemStatus.QUEUED: frozenset({ItemStatus.RUNNING, ItemStatus.CANCELLED}),
    # running -> running: a worker takes over an item whose lease expired before the reaper
    # put it back in the queue (the claim counts it as one more attempt).
    ItemStatus.RUNNING: frozenset(
        {ItemStatus.QUEUED, ItemStatus.RUNNING, ItemStatus.DONE, ItemStatus.CANCELLED}
    ),
    ItemStatus.DONE: frozenset(),
    ItemStatus.CANCELLED: frozenset(),
}
_TABLES: dict[type, dict] = {JobStatus: TRANSITIONS, ItemStatus: ITEM_TRANSITIONS}
S = TypeVar("S", JobStatus, ItemStatus)


class IllegalTransition(RuntimeError):
    """A status change the table does not allow: a bug in the caller, never a user's error."""


def check_transition(
    current: S | str,
    new: S | str,
    machine: type[S] = JobStatus,  # type: ignore[assignment]
) -> S:
    """Return `new` as a status of `machine` (a job's by default, or `ItemStatus`) if
    `current -> new` is legal in its table; raise IllegalTransition if not."""
    table = _TABLES[machine]
    current, new = machine(current), machine(new)
    if new not in table[current]:
        allowed = ", ".join(s.value for s in sorted(table[current])) or "nothing"
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
