"""The queue: the Celery app and `send`. A message only says "work on job X"; PostgreSQL
holds everything else.

Messages are written to the outbox (service.outbox) with the change that calls for them and
sent by its relay with `send`; worker.tasks registers the tasks that receive on this same app.
One job at a time per worker process (concurrency 1, prefetch 1, late acks), JSON messages
only, and time limits below Redis' visibility timeout so a running job's message is never
redelivered while it runs. A worker killed outright leaves its message
unacknowledged; the job is recovered from PostgreSQL by the reaper once its lease expires, not
by the broker.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import redis
from celery import Celery

from service.fairness import LEVELS
from service.settings import get_settings

RUN_JOB_TASK = "blockprune.run_job"
RUN_ITEM_TASK = "blockprune.run_item"  # a work item of a fanned-out job (service.fanout)
# A broker that accepts connections and never answers must not hang a caller: every socket
# operation times out, and a publish is retried a few times only.
SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 3.0
PRIORITY_SEP = ":"  # Redis keys of the levels: <queue>, <queue>:1, ... <queue>:9
log = logging.getLogger(__name__)


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
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout_s,
            "socket_timeout": SOCKET_TIMEOUT_S,
            "socket_connect_timeout": CONNECT_TIMEOUT_S,
            # A list per level (service.fairness); a worker empties level 0's first.
            "priority_steps": list(range(LEVELS)),
            "sep": PRIORITY_SEP,
            "queue_order_strategy": "priority",
        },
        task_default_priority=0,
        broker_connection_timeout=CONNECT_TIMEOUT_S,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 1.0,
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


TASKS = {"job": RUN_JOB_TASK, "item": RUN_ITEM_TASK}


def send(kind: str, ref: str, task_id: str | None = None, priority: int = 0) -> None:
    """Send "run job `ref`" (kind "job") or "run work item `ref`" (kind "item") now, at
    priority level `priority` (service.fairness: 0 is taken first). Callers go through the
    outbox (service.outbox.add), whose relay calls this with a task id that identifies the
    outbox row, so a message sent twice is received once (`first_receipt`)."""
    arg: str | int = ref if kind == "job" else int(ref)
    celery_app().send_task(
        TASKS[kind], args=[arg], queue=get_settings().queue, task_id=task_id, priority=priority
    )
    _mark_waiting(kind, ref)


# ---- which messages are waiting --------------------------------------------------------------
# A sent message leaves a marker in Redis that the worker removes when it receives the message.
# The reaper re-sends a job that has been queued too long only if its marker is gone: the
# message was lost (Redis restarted empty, a send failed), not merely waiting behind others.
# A marker expires, so one left by a crash between receipt and removal costs one late re-send
# at most; a duplicate message is harmless (the job's lease decides who runs it).
def _pending_key(kind: str, ref: str) -> str:
    return f"blockprune:{get_settings().queue}:waiting:{kind}:{ref}"


@lru_cache
def _markers() -> redis.Redis:
    return redis.Redis.from_url(
        get_settings().broker_url,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
    )


def _mark_waiting(kind: str, ref: str) -> None:
    try:
        _markers().set(_pending_key(kind, ref), "1", ex=int(get_settings().waiting_marker_ttl_s))
    except redis.RedisError:  # the message was sent: without a marker it may be sent twice
        log.warning("could not mark %s %s as waiting", kind, ref, exc_info=True)


def message_waiting(kind: str, ref: str) -> bool:
    """Whether a message for this job ("job") or work item ("item") is waiting in the queue;
    False when Redis cannot say (a re-send is the safe side)."""
    try:
        return bool(_markers().exists(_pending_key(kind, ref)))
    except redis.RedisError:
        return False


def message_received(kind: str, ref: str) -> None:
    try:
        _markers().delete(_pending_key(kind, ref))
    except redis.RedisError:
        log.warning("could not clear the waiting marker of %s %s", kind, ref, exc_info=True)


def first_receipt(task_id: str | None) -> bool:
    """Whether this is the first delivery of message `task_id` (the outbox relay may send one
    twice: sent, then killed before it could delete the row). True when Redis cannot say: a
    duplicate is harmless anyway (the job's lease decides who runs it), only wasteful."""
    if not task_id:
        return True
    key = f"blockprune:{get_settings().queue}:received:{task_id}"
    try:
        return bool(_markers().set(key, "1", nx=True, ex=int(get_settings().waiting_marker_ttl_s)))
    except redis.RedisError:
        return True


# ---- is a reaper running? ---------------------------------------------------------------
# Expired leases are judged only by a reaper (in every worker, or `blockprune reaper`): with none
# running, a dead worker's job shows `running` for ever. Each pass leaves a marker that outlives
# a few passes; /readyz reports whether one is there.
def _reaper_key() -> str:
    return f"blockprune:{get_settings().queue}:reaper_seen"


def mark_reaper_pass() -> None:
    ttl = max(30, int(3 * get_settings().reaper_interval_s))
    try:
        _markers().set(_reaper_key(), "1", ex=ttl)
    except redis.RedisError:
        log.warning("could not mark the reaper's pass", exc_info=True)


def reaper_seen() -> bool:
    """Whether a reaper made a pass lately (raises redis.RedisError if Redis cannot say)."""
    return bool(_markers().exists(_reaper_key()))


def queue_depth() -> int:
    """Messages waiting in the Celery queue (a Redis list per priority level); the metrics
    read it."""
    queue = get_settings().queue
    names = [queue] + [f"{queue}{PRIORITY_SEP}{level}" for level in range(1, LEVELS)]
    with _markers().pipeline() as pipe:
        for name in names:
            pipe.llen(name)
        return sum(int(n) for n in pipe.execute())
