"""Running one job in a worker: claim, fetch inputs, run the engine with checkpoints, upload.

The engine's search state is committed after every iteration (worker.leases.Lease.checkpoint);
a job that is claimed again resumes from it and ends with the same result as an uninterrupted
run (the engine guarantees that for a resumed state).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded

from contract import ErrorCode, Phase, Progress, SearchState, UserError
from contract.methods import METHOD_TRAITS
from core.pipeline import PreparedJob, run_job
from service import fanout, outbox
from service.settings import Settings, get_settings
from worker import items, metrics
from worker.job_inputs import prepare
from worker.leases import CancelRequested, Heartbeat, Lease, LeaseLost
from worker.outages import DependencyUnavailable, through_outages
from worker.recipe import commit_export, worker_hooks
from worker.resources import unexpected_failure
from worker.scratch import job_scratch
from worker.sweep import sweep_job

log = logging.getLogger(__name__)


class Reporter:
    """The engine's callbacks: phases, throttled progress, one checkpoint per iteration."""

    def __init__(self, lease: Lease, heartbeat: Heartbeat, settings: Settings) -> None:
        self.lease, self.heartbeat, self.settings = lease, heartbeat, settings
        self.phase_now: Phase | None = None
        self.last_write = 0.0
        self.iteration_time = metrics.Lap(metrics.ITERATION_SECONDS)
        self.candidate_time = metrics.Lap(metrics.CANDIDATE_SECONDS)

    def phase(self, phase: Phase) -> None:
        if phase != self.phase_now:
            self.phase_now = phase
            self.lease.set_phase(phase)
        if phase == Phase.SEARCHING:  # the clocks start with the search, not the loading
            self.iteration_time.restart()
            self.candidate_time.restart()

    def progress(self, progress: Progress) -> None:
        self.candidate_time.observe()  # the engine calls this after each candidate
        now = time.monotonic()
        if now - self.last_write >= self.settings.progress_write_s:
            self.last_write = now
            self.lease.set_progress(progress)
        self.candidate_time.restart()

    def iteration(self, state: SearchState) -> None:
        self.iteration_time.observe()
        progress = Progress(iteration=state.blocks_removed, total_iterations=state.total_iterations)
        self.lease.checkpoint(state, progress)
        self.iteration_time.restart()
        self.candidate_time.restart()

    def should_stop(self) -> bool:
        return self.heartbeat.lost.is_set() or self.lease.cancel_requested


def execute_job(job_id: str) -> None:
    """Run job `job_id` if it is ours to run."""
    settings = get_settings()
    lease = Lease.claim(job_id, f"{socket.gethostname()}:{os.getpid()}", settings.lease_s)
    if lease is None:
        log.info("job %s: nothing to do (finished, held by another worker, or cancelled)", job_id)
        metrics.JOBS.labels("skipped").inc()
        return
    heartbeat = Heartbeat(lease.renew, f"job {job_id}", settings.heartbeat_s)
    heartbeat.start()
    work = job_scratch(settings, job_id)
    outcome = "error"  # unless the attempt ends otherwise (metrics.JOB_OUTCOMES)
    try:
        outcome = _run(lease, heartbeat, settings, work)
    except LeaseLost:
        outcome = "lease_lost"
        log.warning("job %s: lease lost; another worker owns it now", job_id)
    except DependencyUnavailable as e:
        outcome = "failed"
        log.warning("job %s failed: %s", job_id, e)
        _fail_unless_lease_lost(lease, e.to_json())
    except UserError as e:
        outcome = "failed"
        log.info("job %s failed: %s", job_id, e)
        _fail_unless_lease_lost(lease, _for_tenant(e, lease, settings, work).to_json())
    except SoftTimeLimitExceeded:
        message = "the attempt ran past the worker's time limit; it resumes from its checkpoint"
        error = {"code": ErrorCode.TIME_LIMIT.value, "message": message}
        _retry(lease, error, settings.retry_delay_s)
    except Exception as e:
        what = f"job {job_id}: attempt {lease.attempt}"
        _retry(lease, *unexpected_failure(e, work, settings, what, "the attempt"))
    finally:
        heartbeat.stop()
        shutil.rmtree(work, ignore_errors=True)
        if outcome not in ("succeeded", "fanned_out"):
            sweep_job(settings, job_id)  # if it ended cancelled or failed: what it uploaded goes
        outbox.flush(settings)  # what this task queued (re-queue, shares, export) goes out now
        metrics.JOBS.labels(outcome).inc()
        log.info("job %s: attempt %d ended: %s", job_id, lease.attempt, outcome)


def _run(lease: Lease, heartbeat: Heartbeat, settings: Settings, work: Path) -> str:
    """The attempt, to its end; returns how it ended (metrics.JOB_OUTCOMES)."""
    spec = lease.spec
    reporter = Reporter(lease, heartbeat, settings)
    reporter.phase(Phase.LOADING)
    prepared = through_outages(
        lambda: prepare(spec, lease.tenant_id, settings, on_phase=reporter.phase),
        settings,
        on_retry=lease.note_retry,
        should_stop=reporter.should_stop,
    )
    if lease.parallelism > 1 and METHOD_TRAITS[spec.method].fans_out:
        _fan_out(lease, prepared)
        return "fanned_out"
    hooks = worker_hooks(
        lease,
        lease.job_id,
        lease.tenant_id,
        spec,
        settings,
        phase=reporter.phase,
        should_stop=reporter.should_stop,
        checkpoint=reporter.iteration,
        progress=reporter.progress,
    )
    result = run_job(prepared, spec, lease.state or SearchState.new(spec), work / "export", hooks)
    if result.cancelled:  # stopped by a cancel, or by a lease lost (then cancel() says so)
        lease.cancel()
        return "cancelled"
    done = result.state.blocks_removed  # a finished job's progress is whole, whatever its target
    try:
        commit_export(
            lease,
            lease.job_id,
            settings,
            result.published,
            result.evaluation,
            should_stop=reporter.should_stop,
            state=result.state,
            progress=Progress(iteration=done, total_iterations=done),
        )
    except CancelRequested:
        lease.cancel(reason="stopped before its export was committed")
        return "cancelled"
    return "succeeded"


def _fan_out(lease: Lease, prepared: PreparedJob) -> None:
    """Plan the job's search over `parallelism` shares per iteration and hand it to the work
    items (worker.items); this worker keeps the model loaded for the shares it takes."""
    bm, spec = prepared.bm, lease.spec
    candidates = bm.candidates(spec.block_types)
    race = None
    if spec.search == "racing":  # each iteration in stages of shares (service.fanout)
        config = prepared.search_config(spec)
        race = (config.stages(len(prepared.input_ids)), config.race_margin)
    plan = fanout.make_plan(
        candidates,
        [bm.block_params(b) for b in candidates],
        bm.total_params(),
        bm.num_layers,
        race,
    )
    items.keep_loaded(lease.job_id, prepared, lease.spec)
    lease.start_fanout(plan)


def _for_tenant(e: UserError, lease: Lease, settings: Settings, work: Path) -> UserError:
    """The error as the tenant may read it: the worker's own folders (where inputs were
    downloaded, where the export was written) are not the tenant's business."""
    message = e.message
    for folder in (str(settings.cache_dir), str(work)):
        message = message.replace(folder, "<worker>")
    return UserError(e.field, message, e.code)


def _fail_unless_lease_lost(lease: Lease, error: dict) -> None:
    try:
        lease.fail(error)
    except LeaseLost:
        log.warning("job %s: lease lost before its failure could be written", lease.job_id)


def _retry(lease: Lease, error: dict[str, str], delay_s: float) -> None:
    """A failure that may pass: the job goes back to the queue, its message sent after
    `delay_s`, while attempts remain; failed with `error` otherwise."""
    try:
        lease.release(error["code"], error, delay_s)
    except LeaseLost:
        pass
