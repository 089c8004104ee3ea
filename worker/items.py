"""Running one work item of a fanned-out job: a share of an iteration's candidates, or the
export after the last iteration (service.fanout plans them and closes iterations).

An item is leased like a job: claimed with SKIP LOCKED, renewed by a heartbeat, every write
fenced by the lease token. A share skips the candidates already scored (by a worker that died
mid-share, say), so only the one in flight when a worker dies is scored twice. A worker keeps
the last job's model and calibration tokens loaded between its shares.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from contract import Block, ErrorCode, ItemStatus, JobSpec, JobStatus, SearchState, UserError
from contract.racing import stage_chunks
from core.pipeline import PreparedJob
from core.search import CandidateScorer
from service import fanout, outbox, transitions
from service.db import transaction
from service.jobstore import add_event
from service.logs import bind_log_context
from service.settings import Settings, get_settings
from service.tables import Job, WorkItem
from worker import metrics
from worker.job_inputs import prepare
from worker.leases import FencedLease, Heartbeat, LeaseLost
from worker.outages import DependencyUnavailable, outlasts_database_outages, through_outages
from worker.resources import unexpected_failure
from worker.scratch import job_scratch
from worker.sweep import sweep_job

log = logging.getLogger(__name__)


class Stop(Exception):
    """The job was cancelled or ended: this item stops without writing more."""


class ItemLease(FencedLease):
    """A work item of a fanned-out job, held by one worker. Its fenced writes lock the job row
    first (every score write of a job is serialised), then the item by its lease token."""

    def __init__(self, item_id: int, token: str, owner: str, lease_s: float) -> None:
        self.item_id, self.token, self.owner, self.lease_s = item_id, token, owner, lease_s

    @classmethod
    @outlasts_database_outages
    def claim(cls, item_id: int, owner: str, lease_s: float) -> ItemLease | None:
        with transaction() as s:
            item = s.scalar(
                select(WorkItem).where(WorkItem.id == item_id).with_for_update(skip_locked=True)
            )
            if item is None or ItemStatus(item.status).terminal:
                return None
            now: datetime = s.execute(select(func.now())).scalar_one()
            running = item.status == ItemStatus.RUNNING
            if running and item.lease_expires_at and item.lease_expires_at > now:
                return None
            job = s.get(Job, item.job_id, with_for_update=True)
            assert job is not None
            if job.cancel_requested or JobStatus(job.status).terminal:
                if job.cancel_requested:
                    fanout.cancel(s, job, reason="cancel requested")
                if not ItemStatus(item.status).terminal:
                    transitions.set_item_status(item, ItemStatus.CANCELLED)
                return None
            if item.attempts >= job.max_attempts:
                error = {
                    "code": ErrorCode.ATTEMPTS_EXHAUSTED.value,
                    "message": f"a work item was lost {item.attempts} times (max_attempts)",
                }
                transitions.finish(s, job, JobStatus.FAILED, error=error)
                fanout.close_items(s, job.id)
                return None
            token = str(uuid.uuid4())
            expires = now + timedelta(seconds=lease_s)
            transitions.set_item_status(
                item, ItemStatus.RUNNING, token=token, owner=owner, expires_at=expires
            )
            return cls(item.id, token, owner, lease_s)

    def _locked_item(self, s: Session) -> tuple[Job, WorkItem]:
        """The job row (locked first), then this item, fenced by the lease token. A job that
        was cancelled or ended stops the item (Stop)."""
        job_id = s.scalar(select(WorkItem.job_id).where(WorkItem.id == self.item_id))
        job = s.get(Job, job_id, with_for_update=True)
        item = s.scalar(
            select(WorkItem)
            .where(WorkItem.id == self.item_id, WorkItem.lease_token == self.token)
            .with_for_update()
        )
        if job is None or item is None or item.status != ItemStatus.RUNNING:
            raise LeaseLost(str(self.item_id))
        if job.cancel_requested or JobStatus(job.status).terminal:
            raise Stop  # this transaction rolls back: `settle_cancel` commits the cancel
        item.lease_expires_at = func.now() + timedelta(seconds=self.lease_s)
        return job, item

    def _locked(self, s: Session) -> Job:
        return self._locked_item(s)[0]

    def settle_cancel(self) -> str | None:
        """End the job cancelled, and every open item of it, if its cancel was requested: in a
        transaction of its own, since the write that met the cancel raised Stop and rolled back
        (a cancel made there would wait for the items' leases to expire). Returns the job's id."""
        with transaction() as s:
            job_id = s.scalar(select(WorkItem.job_id).where(WorkItem.id == self.item_id))
            job = s.get(Job, job_id, with_for_update=True) if job_id is not None else None
            if job is not None and job.cancel_requested:
                fanout.cancel(s, job, reason="stopped between candidates")
            return job_id

    def _on_job_end(self, s: Session, job: Job, status: JobStatus) -> None:
        """The export item succeeded with the job; a failure ends every item of the job."""
        if status is JobStatus.SUCCEEDED:
            item = s.get(WorkItem, self.item_id)  # locked by `_locked` in this transaction
            assert item is not None
            transitions.set_item_status(item, ItemStatus.DONE)
        else:
            fanout.close_items(s, job.id)

    @outlasts_database_outages
    def record(
        self,
        block: Block,
        ppl: float,
        removed_ppl: float,
        nlls: list[float] | None = None,
    ) -> None:
        """Commit a score, with the messages of the items it creates when it closed a stage or
        the iteration (the next stage's or iteration's shares, or the export)."""
        with transaction() as s:
            job, item = self._locked_item(s)
            new_items = fanout.record_score(s, job, item, block, ppl, removed_ppl, self.owner, nlls)
            for new in new_items:
                outbox.add(s, "item", new.id)

    @outlasts_database_outages
    def done(self) -> None:
        with transaction() as s:
            _, item = self._locked_item(s)
            transitions.set_item_status(item, ItemStatus.DONE)

    @outlasts_database_outages
    def release(self, delay_s: float, error: dict[str, str]) -> None:
        """Back to the queue after a failure that may pass (`error`: its code and message, in a
        "retry" event), its message sent after `delay_s`; the item's last attempt fails the
        job with `error` itself, not with a lost item's attempts_exhausted."""
        with transaction() as s:
            job, item = self._locked_item(s)
            if item.attempts >= job.max_attempts:
                transitions.finish(s, job, JobStatus.FAILED, error=error)
                fanout.close_items(s, job.id)
                return
            add_event(
                s,
                job.id,
                "retry",
                reason=error["code"],
                item=item.id,
                attempt=item.attempts,
                worker=transitions.worker_id(item.lease_owner),
                **error,
            )
            transitions.set_item_status(item, ItemStatus.QUEUED)
            outbox.add(s, "item", item.id, delay_s)


# job id -> its model, tokens and scorer: the last job only, kept between its shares
_loaded: dict[str, tuple[PreparedJob, CandidateScorer]] = {}


def execute_item(item_id: int) -> None:
    settings = get_settings()
    owner = f"{socket.gethostname()}:{os.getpid()}"
    lease = ItemLease.claim(item_id, owner, settings.lease_s)
    if lease is None:
        metrics.ITEMS.labels("skipped").inc()
        return
    heartbeat = Heartbeat(
        lease.renew, f"work item {item_id}", settings.heartbeat_s, stop_on=(LeaseLost, Stop)
    )
    heartbeat.start()
    outcome = "error"  # unless the item ends otherwise (metrics.ITEM_OUTCOMES)
    try:
        _run(lease, heartbeat, settings)
        outcome = "done"
    except (LeaseLost, Stop):
        outcome = "stopped"
        log.info("work item %s stopped: lease lost or job ended", item_id)
    except (UserError, DependencyUnavailable) as e:
        outcome = "failed"
        log.info("work item %s: job failed: %s", item_id, e)
        try:
            lease.fail(e.to_json())
        except (LeaseLost, Stop):
            pass
    except Exception as e:
        error, delay = unexpected_failure(
            e, settings.work_dir, settings, f"work item {item_id}", "a work item"
        )
        try:
            lease.release(delay, error)
        except (LeaseLost, Stop):
            pass
    finally:
        heartbeat.stop()
        if outcome != "done":
            if job_id := lease.settle_cancel():
                sweep_job(settings, job_id)  # if it ended cancelled or failed: its uploads go
        outbox.flush(settings)  # what this task queued (re-queue, shares, export) goes out now
        metrics.ITEMS.labels(outcome).inc()
        log.info("work item %s ended: %s", item_id, outcome)


def _run(lease: ItemLease, heartbeat: Heartbeat, settings: Settings) -> None:
    with transaction() as s:
        item = s.get(WorkItem, lease.item_id)
        job = s.get(Job, item.job_id) if item else None
        assert item is not None and job is not None
        spec, tenant_id, job_id = JobSpec.model_validate(job.spec), job.tenant_id, job.id
        state = SearchState.from_json(job.state)
        kind, iteration, stage = item.kind, item.iteration, item.stage
        candidates = [Block.model_validate(c) for c in item.candidates]
        stage_ends = fanout.plan_of(job).stages if job.plan is not None else None
        done_already = fanout.scored(s, job_id, iteration, stage)
        earlier = fanout.earlier_nlls(s, job_id, iteration, stage) if stage_ends else {}
    bind_log_context(job_id=job_id)
    prepared, scorer = _loaded.get(job_id) or keep_loaded(
        job_id,
        through_outages(
            lambda: prepare(spec, tenant_id, settings),
            settings,
            on_retry=lease.note_retry,
            should_stop=heartbeat.lost.is_set,
        ),
        spec,
    )
    if kind == "export":
        _export(lease, heartbeat, job_id, tenant_id, spec, state, prepared, settings)
        return
    removed = state.removed_blocks
    todo = [b for b in candidates if b not in done_already]

    candidate_time = metrics.Lap(metrics.CANDIDATE_SECONDS)

    def on_score(block: Block, ppl: float, nlls: list[float] | None = None) -> None:
        candidate_time.observe()
        assert scorer.removed_ppl is not None  # the scorer's full pass comes before any score
        lease.record(block, ppl, scorer.removed_ppl, nlls)
        candidate_time.restart()

    if stage_ends is None:
        scorer.score(removed, todo, on_score=on_score, should_stop=heartbeat.lost.is_set)
    else:
        step = scorer.batch_size or len(scorer.input_ids)
        chunks = stage_chunks(stage_ends, stage - 1, step)
        _race_share(scorer, removed, todo, chunks, earlier, on_score, heartbeat.lost.is_set)
    if heartbeat.lost.is_set():
        raise Stop
    lease.done()


def _race_share(
    scorer: CandidateScorer,
    removed: list[Block],
    todo: list[Block],
    chunks: range,
    earlier: dict[Block, list[float]],
    on_score: Callable[..., None],
    should_stop: Callable[[], bool],
) -> None:
    """A racing stage's share: each candidate's NLLs on this stage's slice, committed with its
    PPL on every sequence seen so far (after the last stage: the full-set PPL, bit for bit the
    engine's, from the earlier stages' stored NLLs and this one's)."""
    import torch

    from core.activations import ppl_from_nlls

    def on_nlls(block: Block, nlls: torch.Tensor) -> None:
        values = nlls.tolist()
        seen = torch.tensor(earlier.get(block, []) + values, dtype=nlls.dtype)
        on_score(block, ppl_from_nlls(seen), values)

    scorer.sequence_nlls(removed, todo, chunks, on_nlls, should_stop)


def keep_loaded(
    job_id: str, prepared: PreparedJob, spec: JobSpec
) -> tuple[PreparedJob, CandidateScorer]:
    """Keep this job's model and tokens for this worker's shares (one job's at a time)."""
    _loaded.clear()
    _loaded[job_id] = (prepared, prepared.scorer(spec))
    return _loaded[job_id]


def _export(
    lease: ItemLease,
    heartbeat: Heartbeat,
    job_id: str,
    tenant_id: str,
    spec: JobSpec,
    state: SearchState,
    prepared: PreparedJob,
    settings: Settings,
) -> None:
    """The export item: the job recipe's finish (evaluate, export, upload), then success."""
    from core.pipeline import finish_job
    from worker.recipe import commit_export, worker_hooks

    hooks = worker_hooks(
        lease,
        job_id,
        tenant_id,
        spec,
        settings,
        phase=lease.set_phase,
        should_stop=heartbeat.lost.is_set,
    )
    work = job_scratch(settings, job_id)
    try:
        result = finish_job(prepared, spec, state, work / "export", hooks)
        if result.cancelled:
            raise Stop
        commit_export(
            lease,
            job_id,
            settings,
            result.published,
            result.evaluation,
            should_stop=heartbeat.lost.is_set,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
