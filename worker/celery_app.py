"""The Celery app. A message only says "work on job X"; PostgreSQL holds everything else.

One job at a time per worker process (concurrency 1, prefetch 1, late acks), JSON messages only,
and time limits below Redis' visibility timeout so a running job's message is never redelivered
while it runs. A worker killed outright leaves its message unacknowledged; the job is recovered
from PostgreSQL by the reaper once its lease expires, not by the broker.
"""

from __future__ import annotations

import logging

from celery import Celery, signals

from worker.settings import get_settings

RUN_JOB_TASK = "blockprune.run_job"
log = logging.getLogger(__name__)


def make_app() -> Celery:
    settings = get_settings()
    app = Celery("blockprune", broker=settings.broker_url)
    app.conf.update(
        task_default_queue=settings.queue,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        # Acked, not re-queued, when the child dies: the lease in PostgreSQL decides who runs
        # the job next, and the reaper re-enqueues it once the lease expires.
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        task_soft_time_limit=settings.task_soft_time_limit_s,
        task_time_limit=settings.task_time_limit_s,
        broker_transport_options={"visibility_timeout": settings.broker_visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


app = make_app()


@app.task(name=RUN_JOB_TASK)
def run_job(job_id: str) -> None:
    from worker.runner import execute_job  # imports torch: only in worker processes

    execute_job(job_id)


def enqueue(job_id: str, countdown: float | None = None) -> None:
    app.send_task(RUN_JOB_TASK, args=[job_id], queue=get_settings().queue, countdown=countdown)


# ---- worker process lifecycle -------------------------------------------------------------
_reaper = None


@signals.worker_init.connect
def _preload_engine(**_) -> None:
    """Import the engine (torch, transformers) once in the main process, before the pool forks,
    so no job pays for it. CUDA is not initialised here, so forking stays safe."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    import core.calibration  # noqa: F401
    import core.export  # noqa: F401
    import core.pipeline  # noqa: F401


@signals.worker_process_init.connect
def _forked_child(**_) -> None:
    from worker.db import reset_engine

    reset_engine(after_fork=True)  # never share the parent's pooled connections


@signals.worker_ready.connect
def _start_reaper(**_) -> None:
    global _reaper
    if get_settings().worker_runs_reaper:
        from worker.reaper import ReaperThread

        _reaper = ReaperThread(get_settings())
        _reaper.start()
        log.info("reaper running every %ss", get_settings().reaper_interval_s)


@signals.worker_shutdown.connect
def _stop_reaper(**_) -> None:
    if _reaper is not None:
        _reaper.stop()
