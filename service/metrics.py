"""What a Prometheus scrape shows, for the API and the worker alike, and the service's state
read at scrape time: jobs by status, the queue's depth and the outbox's backlog.

No label carries a tenant, a job id or a path: series are per route template, status,
outcome, queue name. docs/observability.md lists them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import func, select, text

from contract import JobStatus
from service import queue
from service.db import transaction
from service.multiproc import ENV
from service.tables import Job, OutboxMessage

log = logging.getLogger(__name__)
# The most a scrape waits for PostgreSQL or Redis; Prometheus' own scrape timeout is 10 s.
STATS_TIMEOUT_S = 2.0


def scrape_registry(*collectors: Any) -> CollectorRegistry:
    """A registry of what this process's scrape shows: every process's samples (from the
    multiprocess files) or, without multiprocess mode, this process's own (its default
    registry, with the process_* and python_* series); and `collectors`, read at each scrape.
    auto_describe=False: registering reads nothing (a collector without `describe` would
    otherwise be collected, here a database query, on the spot)."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get(ENV):
        MultiProcessCollector(registry)
    else:
        registry.register(REGISTRY)
    for collector in collectors:
        registry.register(collector)
    return registry


class ServiceStats:
    """The service's state, read when scraped: `blockprune_jobs{status}` (one GROUP BY),
    `blockprune_outbox_pending`, `blockprune_queue_depth{queue}` (LLEN in Redis), and
    `blockprune_stats_up{source}`: 0 when a source did not answer within STATS_TIMEOUT_S.

    Each source is read in a daemon thread that the scrape waits for until the deadline, so a
    slow or unreachable database costs the scrape these series, never the scrape itself (nor
    the process's exit). A read still running when the next scrape comes is waited for again
    rather than started twice; PostgreSQL cancels the query itself at the same deadline."""

    def __init__(self, queue_name: str, timeout_s: float = STATS_TIMEOUT_S) -> None:
        self.queue_name, self.timeout_s = queue_name, timeout_s
        self._reads: dict[str, Future] = {}
        self._lock = threading.Lock()  # two scrapes at once start one read per source

    def collect(self) -> Iterator[Metric]:
        reads = {"database": self._database, "broker": queue.queue_depth}
        futures = {source: self._start(source, read) for source, read in reads.items()}
        deadline = time.monotonic() + self.timeout_s
        up = GaugeMetricFamily(
            "blockprune_stats_up",
            "1 if the source answered this scrape's read in time, else 0",
            labels=["source"],
        )
        answers: dict[str, Any] = {}
        for source, future in futures.items():
            try:
                answers[source] = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception as e:  # a timeout, or the source's own error: the scrape goes on
                # One line, no traceback: a source that is down would repeat it every scrape.
                log.warning("metrics: no %s stats this scrape: %r", source, e)
            up.add_metric([source], 1 if source in answers else 0)
        yield up
        if "database" in answers:
            by_status, outbox = answers["database"]
            jobs = GaugeMetricFamily("blockprune_jobs", "Jobs by status, now", labels=["status"])
            for status in JobStatus:  # every status, 0 included, so a series never vanishes
                jobs.add_metric([status.value], by_status.get(status.value, 0))
            yield jobs
            yield GaugeMetricFamily(
                "blockprune_outbox_pending",
                "Queue messages committed and not sent yet (rows of the outbox table)",
                value=outbox,
            )
        if "broker" in answers:
            depth = GaugeMetricFamily(
                "blockprune_queue_depth",
                "Messages waiting in the Celery queue (LLEN of the Redis list)",
                labels=["queue"],
            )
            depth.add_metric([self.queue_name], answers["broker"])
            yield depth

    def _start(self, source: str, read: Callable[[], Any]) -> Future:
        with self._lock:
            future = self._reads.get(source)
            if future is None or future.done():
                future = self._reads[source] = Future()
                threading.Thread(
                    target=_fill, args=(future, read), name=f"metrics {source}", daemon=True
                ).start()
            return future

    def _database(self) -> tuple[dict[str, int], int]:
        with transaction() as s:
            # The database gives up (and frees the connection) when the scrape stops waiting.
            s.execute(text(f"SET LOCAL statement_timeout = {int(self.timeout_s * 1000)}"))
            rows = s.execute(select(Job.status, func.count()).group_by(Job.status)).all()
            outbox = s.scalar(select(func.count()).select_from(OutboxMessage)) or 0
        return {status: count for status, count in rows}, outbox


def _fill(future: Future, read: Callable[[], Any]) -> None:
    try:
        future.set_result(read())
    except BaseException as e:  # handed to the scrape that waits for it
        future.set_exception(e)
