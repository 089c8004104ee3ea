"""The worker process: the Celery task that runs a job, and the process's lifecycle hooks
(logging in one format, preload the engine, fresh database connections after fork, the
reaper and outbox relay threads, the metrics exporter).

The task is thin: it hands the job id to worker.runner, which does the work.
"""

from __future__ import annotations

import logging

from celery import signals

from service.db import reset_engine
from service.logs import configure_logging, log_context
from service.outbox import Relay
from service.queue import RUN_ITEM_TASK, RUN_JOB_TASK, celery_app, first_receipt, message_received
from service.settings import get_settings
from worker.items import execute_item
from worker.metrics import Exporter
from worker.reaper import ReaperThread
from worker.runner import execute_job
from worker.scratch import clean_leftovers

log = logging.getLogger(__name__)
app = celery_app()


@app.task(name=RUN_JOB_TASK, bind=True)
def run_job(self, job_id: str) -> None:
    with log_context(job_id=job_id):
        message_received("job", job_id)
        if first_receipt(self.request.id):  # a duplicate of a message already received: dropped
            execute_job(job_id)


@app.task(name=RUN_ITEM_TASK, bind=True)
def run_item(self, item_id: int) -> None:
    with log_context(item_id=item_id):  # and its job's id, once known (worker.items)
        message_received("item", str(item_id))
        if first_receipt(self.request.id):
            execute_item(item_id)


_reaper: ReaperThread | None = None
_relay: Relay | None = None
_exporter: Exporter | None = None


@signals.setup_logging.connect
def _setup_logging(loglevel: int | str | None = None, **_) -> None:
    """Every line in BLOCKPRUNE_LOG_FORMAT (service.logs), not Celery's own format: with a
    receiver here, Celery leaves logging alone."""
    configure_logging(get_settings().log_format, loglevel or logging.INFO)


@signals.worker_init.connect
def _preload_engine(**_) -> None:
    """Import the engine (torch, transformers; core.pipeline imports them only when a job runs)
    once in the main process, before the pool forks, so no job pays for it. CUDA is not
    initialised here, so forking stays safe."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
    from transformers.utils.logging import disable_progress_bar

    import core.calibration  # noqa: F401
    import core.export  # noqa: F401
    import core.search  # noqa: F401

    # A worker's log is read by people and log shippers, not a terminal: no progress bars.
    disable_progress_bar()
    disable_progress_bars()


@signals.worker_process_init.connect
def _forked_child(**_) -> None:
    reset_engine(after_fork=True)  # never share the parent's pooled connections
    clean_leftovers(get_settings())  # a killed predecessor's work folders


@signals.worker_ready.connect
def _start_background_threads(**_) -> None:
    """The main process's own threads: the outbox relay, the reaper (unless the settings say
    it runs elsewhere) and the metrics exporter."""
    global _reaper, _relay, _exporter
    settings = get_settings()
    _relay = Relay(settings)  # the pool's commits leave messages in the outbox: send them
    _relay.start()
    if settings.worker_runs_reaper:
        _reaper = ReaperThread(settings)
        _reaper.start()
        log.info("reaper running every %ss", settings.reaper_interval_s)
    # Last: a port already taken fails this hook, and must not cost the relay or the reaper.
    if settings.worker_metrics_port or settings.pushgateway_url:
        _exporter = Exporter(settings)  # the pool's metrics, from this main process
        _exporter.start()


@signals.worker_shutdown.connect
def _stop_background_threads(**_) -> None:
    for thread in (_reaper, _relay, _exporter):
        if thread is not None:
            thread.stop()
