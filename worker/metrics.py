"""A worker's metrics (docs/observability.md): tasks run by outcome, seconds per search
iteration and per candidate, the heartbeat's age; and how they leave the worker.

Celery runs tasks in a prefork child; the parent serves (or pushes) what every child wrote, from
the files of prometheus_client's multiprocess mode (`blockprune worker` sets the folder up,
service.multiproc). The metric objects are made when this module is first imported, in the
parent, before the pool forks, so every series exists, at 0, from the worker's start.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from prometheus_client import Counter, Gauge, Histogram, delete_from_gateway, push_to_gateway
from prometheus_client import start_http_server as serve_metrics

from service.metrics import scrape_registry
from service.settings import Settings

log = logging.getLogger(__name__)

# succeeded, failed and cancelled are the job's end; fanned_out: its search went to work items;
# lease_lost: another worker owns it now; error: a crash or time limit, re-queued while
# attempts remain; skipped: nothing to do (finished, held elsewhere, a duplicate message).
JOB_OUTCOMES = ("succeeded", "failed", "cancelled", "fanned_out", "lease_lost", "error", "skipped")
# done: a share scored, or the export made and the job succeeded; stopped: the job ended or the
# lease was lost under it; failed, error and skipped as for jobs.
ITEM_OUTCOMES = ("done", "stopped", "failed", "error", "skipped")

JOBS = Counter("blockprune_worker_jobs", "Job tasks run, by outcome", ["outcome"])
ITEMS = Counter(
    "blockprune_worker_items", "Work items (shares, exports) run, by outcome", ["outcome"]
)
for _outcome in JOB_OUTCOMES:
    JOBS.labels(_outcome)
for _outcome in ITEM_OUTCOMES:
    ITEMS.labels(_outcome)
# From a tiny model's fraction of a second to a 70B model's hour-long iteration on one GPU.
ITERATION_SECONDS = Histogram(
    "blockprune_worker_iteration_seconds",
    "Seconds per search iteration on one worker (checkpoint writes excluded)",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)
CANDIDATE_SECONDS = Histogram(
    "blockprune_worker_candidate_seconds",
    "Seconds per candidate scored, in a search or a share (progress writes excluded)",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
# The most recent write wins across processes: a dead child's last value is older than its
# successor's.
HEARTBEAT_AGE = Gauge(
    "blockprune_worker_heartbeat_age_seconds",
    "Seconds since the running task's lease was last renewed, as of its last beat; 0 when idle",
    multiprocess_mode="mostrecent",
)
HEARTBEAT_AGE.set(0)  # a value with a time: mostrecent shows nothing until one is written


class Lap:
    """Seconds of engine work between a worker's callbacks: `observe()` when a unit of work
    (an iteration, a candidate) has ended, `restart()` once the callback's own writes are done.
    The first candidate after a restart also holds the pass that builds the activation cache."""

    def __init__(self, histogram: Histogram) -> None:
        self.histogram, self.began = histogram, time.monotonic()

    def observe(self) -> None:
        self.histogram.observe(time.monotonic() - self.began)

    def restart(self) -> None:
        self.began = time.monotonic()


class Exporter:
    """In the worker's main process: serves the metrics on BLOCKPRUNE_WORKER_METRICS_PORT and/or
    pushes them to BLOCKPRUNE_PUSHGATEWAY_URL every pushgateway_interval_s, as the group
    instance=<host>:<pid>, deleted at a clean stop (the Pushgateway would keep a gone worker's
    last values forever; a killed worker's group stays, its push_time_seconds tells)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = scrape_registry()
        self.group = {"instance": f"{socket.gethostname()}:{os.getpid()}"}
        self._stopped = threading.Event()
        self._pusher: threading.Thread | None = None

    def start(self) -> None:
        if self.settings.worker_metrics_port:
            host, port = self.settings.worker_metrics_host, self.settings.worker_metrics_port
            serve_metrics(port, addr=host, registry=self.registry)
            log.info("metrics on http://%s:%d/metrics", host, port)
        if self.settings.pushgateway_url:
            self._pusher = threading.Thread(target=self._push_loop, name="metrics push")
            self._pusher.daemon = True
            self._pusher.start()

    def _push_loop(self) -> None:
        while not self._stopped.wait(self.settings.pushgateway_interval_s):
            self._push()

    def _push(self) -> None:
        assert self.settings.pushgateway_url is not None
        try:
            push_to_gateway(
                self.settings.pushgateway_url,
                job="blockprune_worker",
                registry=self.registry,
                grouping_key=self.group,
                timeout=5,
            )
        except Exception:  # an unreachable gateway costs metrics, never the worker
            log.warning("metrics: push to the Pushgateway failed", exc_info=True)

    def stop(self) -> None:
        self._stopped.set()
        if self._pusher is not None and self.settings.pushgateway_url:
            try:
                delete_from_gateway(
                    self.settings.pushgateway_url,
                    job="blockprune_worker",
                    grouping_key=self.group,
                    timeout=5,
                )
            except Exception:
                log.warning("metrics: could not delete this worker's group", exc_info=True)
