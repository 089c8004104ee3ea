"""The worker process: the Celery task that runs a job, and the process's lifecycle hooks
(preload the engine, fresh database connections after fork, the reaper and outbox relay
threads).

The task is thin: it hands the job id to worker.runner, which does the work.
"""

from __future__ import annotations

import logging

from celery import signals

from service.db import reset_engine
from service.outbox import Relay
from service.queue import RUN_ITEM_TASK, RUN_JOB_TASK, celery_app, first_receipt, message_received
from service.settings import get_settings
from worker.items import execute_item
from worker.reaper import ReaperThread
from worker.runner import execute_job
from worker.scratch import clean_leftovers

log = logging.getLogger(__name__)
app = celery_app()


@app.task(name=RUN_JOB_TASK, bind=True)
def run_job(self, job_id: str) -> None:
    message_received("job", job_id)
    if first_receipt(self.request.id):  # a duplicate of a message already received: dropped
        execute_job(job_id)


@app.task(name=RUN_ITEM_TASK, bind=True)
def run_item(self, item_id: int) -> None:
    message_received("item", str(item_id))
    if first_receipt(self.request.id):
        execute_item(item_id)


_reaper: ReaperThread | None = None
_relay: Relay | None = None


@signals.worker_init.connect
def _preload_engine(**_) -> None:
    """Import the engine (torch, transformers; core.pipeline imports them only when a job runs)
    once in the main process, before the pool forks, so no job pays for it. CUDA is not
    initialised here, so forking stays safe."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    import core.calibration  # noqa: F401
    import core.export  # noqa: F401
    import core.search  # noqa: F401


@signals.worker_process_init.connect
def _forked_child(**_) -> None:
    reset_engine(after_fork=True)  # never share the parent's pooled connections
    clean_leftovers(get_settings())  # a killed predecessor's work folders


@signals.worker_ready.connect
def _start_reaper(**_) -> None:
    global _reaper, _relay
    settings = get_settings()
    _relay = Relay(settings)  # the pool's commits leave messages in the outbox: send them
    _relay.start()
    if settings.worker_runs_reaper:
        _reaper = ReaperThread(settings)
        _reaper.start()
        log.info("reaper running every %ss", settings.reaper_interval_s)


@signals.worker_shutdown.connect
def _stop_reaper(**_) -> None:
    for thread in (_reaper, _relay):
        if thread is not None:
            thread.stop()
