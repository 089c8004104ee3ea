"""The queue: the Celery app and `enqueue`. A message only says "work on job X"; PostgreSQL
holds everything else.

The API, the runner and the reaper send with `enqueue`; worker.tasks registers the task that
receives on this same app. One job at a time per worker process (concurrency 1, prefetch 1, late
acks), JSON messages only, and time limits below Redis' visibility timeout so a running job's
message is never redelivered while it runs. A worker killed outright leaves its message
unacknowledged; the job is recovered from PostgreSQL by the reaper once its lease expires, not
by the broker.
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from service.settings import get_settings

RUN_JOB_TASK = "blockprune.run_job"
RUN_ITEM_TASK = "blockprune.run_item"  # a work item of a fanned-out job (service.fanout)


@lru_cache
def celery_app() -> Celery:
    settings = get_settings()
    app = Celery("blockprune", broker=settings.broker_url, set_as_current=False)
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


def enqueue(job_id: str, countdown: float | None = None) -> None:
    """Send "run job `job_id`" (after `countdown` seconds)."""
    celery_app().send_task(
        RUN_JOB_TASK, args=[job_id], queue=get_settings().queue, countdown=countdown
    )


def enqueue_item(item_id: int, countdown: float | None = None) -> None:
    """Send "run work item `item_id`" (a share of a fanned-out search, or its export)."""
    celery_app().send_task(
        RUN_ITEM_TASK, args=[item_id], queue=get_settings().queue, countdown=countdown
    )
