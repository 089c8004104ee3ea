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
import tempfile
import threading
import time
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded

from core.errors import UserError
from worker.downloads import fetch_calibration, fetch_model
from worker.leases import Lease, LeaseLost
from worker.settings import Settings, get_settings
from worker.storage import s3_client, upload_export

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Renews the lease in the background and notices cancel requests and a lost lease."""

    def __init__(self, lease: Lease, interval_s: float) -> None:
        super().__init__(name=f"heartbeat-{lease.job_id}", daemon=True)
        self.lease, self.interval_s = lease, interval_s
        self.lost, self.cancel_requested = threading.Event(), threading.Event()
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            try:
                if self.lease.renew():
                    self.cancel_requested.set()
            except LeaseLost:
                self.lost.set()
                return
            except Exception:  # a database blip; the lease outlives a few missed beats
                log.exception("heartbeat for job %s failed", self.lease.job_id)

    def stop(self) -> None:
        self._stopped.set()


class Reporter:
    """The engine's callbacks: phases, throttled progress, one checkpoint per iteration."""

    def __init__(self, lease: Lease, heartbeat: Heartbeat, settings: Settings) -> None:
        self.lease, self.heartbeat, self.settings = lease, heartbeat, settings
        self.phase_name: str | None = None
        self.completed = (lease.state or {}).get("iteration", 0)
        self.total: int | None = None
        self.last_write = 0.0

    def phase(self, name: str) -> None:
        if name != self.phase_name:
            self.phase_name = name
            self.lease.set_phase(name)

    def progress_dict(self, scored: int = 0, candidates: int = 0, best_ppl=None) -> dict:
        fraction = None
        if self.total:
            within = scored / candidates if candidates else 0.0
            fraction = min(1.0, (self.completed + within) / self.total)
        return {
            "iteration": self.completed,
            "total_iterations": self.total,
            "scored": scored,
            "total_candidates": candidates,
            "fraction": fraction,
            "best_ppl": best_ppl,
        }

    def progress(self, p: dict) -> None:
        self.total = p.get("total_iterations")
        now = time.monotonic()
        if now - self.last_write < self.settings.progress_write_s:
            return
        self.last_write = now
        progress = self.progress_dict(p["scored"], p["total_candidates"], p.get("best_ppl"))
        if self.lease.set_progress(progress):
            self.heartbeat.cancel_requested.set()

    def iteration(self, state: dict) -> None:
        self.completed = state["iteration"]
        self.total = state.get("total_iterations", self.total)
        if self.lease.checkpoint(state, self.progress_dict()):
            self.heartbeat.cancel_requested.set()
        deadline = time.monotonic() + self.settings.debug_iteration_delay_s
        while time.monotonic() < deadline and not self.should_stop():
            time.sleep(0.05)

    def should_stop(self) -> bool:
        return self.heartbeat.lost.is_set() or self.heartbeat.cancel_requested.is_set()


def execute_job(job_id: str) -> None:
    settings = get_settings()
    lease = Lease.claim(job_id, f"{socket.gethostname()}:{os.getpid()}", settings.lease_s)
    if lease is None:
        log.info("job %s: nothing to do (finished, held by another worker, or cancelled)", job_id)
        return
    heartbeat = Heartbeat(lease, settings.heartbeat_s)
    heartbeat.start()
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{job_id}-", dir=settings.work_dir))
    try:
        _run(lease, heartbeat, settings, work)
    except LeaseLost:
        log.warning("job %s: lease lost; another worker owns it now", job_id)
    except UserError as e:
        _write(lease.fail, {"code": e.code, "message": str(e), "field": e.field})
    except SoftTimeLimitExceeded:
        _retry(lease, settings, "time_limit", "task_soft_time_limit_s reached")
    except Exception as e:
        log.exception("job %s failed", job_id)
        _retry(lease, settings, "error", f"{type(e).__name__}: {e}")
    finally:
        heartbeat.stop()
        shutil.rmtree(work, ignore_errors=True)


def _run(lease: Lease, heartbeat: Heartbeat, settings: Settings, work: Path) -> None:
    from core.pipeline import PruneSpec, run_prune

    spec = PruneSpec(
        **lease.spec, device=_device(settings.device), cache_dir=str(settings.cache_dir)
    )
    reporter = Reporter(lease, heartbeat, settings)
    reporter.phase("loading")
    s3 = s3_client(settings)
    inputs = settings.cache_dir / "s3"
    model_path = calibration_path = None
    if spec.model.startswith("s3://"):
        model_path = str(fetch_model(s3, spec.model, inputs))
    if spec.calibration.startswith("s3://"):
        calibration_path = str(fetch_calibration(s3, spec.calibration, inputs))
    result = run_prune(
        spec,
        work / "export",
        model_path=model_path,
        calibration_path=calibration_path,
        state=lease.state,
        on_phase=reporter.phase,
        on_iteration=reporter.iteration,
        on_progress=reporter.progress,
        should_stop=reporter.should_stop,
    )
    if heartbeat.lost.is_set():
        raise LeaseLost(lease.job_id)
    if result.cancelled or lease.renew():  # a cancel that came during the export wins too
        lease.cancel()
        return
    reporter.phase("uploading")
    assert result.out_dir is not None
    files = upload_export(s3, settings, result.out_dir, lease.job_id)
    lease.succeed(result.state, files, {**reporter.progress_dict(), "fraction": 1.0})


def _device(setting: str) -> str:
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _write(action, *args) -> None:
    try:
        action(*args)
    except LeaseLost:
        log.warning("lease lost before the job's outcome could be written")


def _retry(lease: Lease, settings: Settings, reason: str, message: str) -> None:
    from worker.celery_app import enqueue

    error = {"code": "internal_error" if reason == "error" else reason, "message": message}
    try:
        requeued = lease.release(reason, error)
    except LeaseLost:
        return
    if requeued:
        enqueue(lease.job_id, countdown=settings.retry_delay_s)
