"""Prometheus' multiprocess mode for the commands that run several processes: `blockprune api
--workers N` (uvicorn's processes) and `blockprune worker` (Celery's prefork child runs the
tasks, its parent serves the metrics).

In that mode each process writes its samples to files in PROMETHEUS_MULTIPROC_DIR and a scrape
adds them up over processes (service.metrics.scrape_registry). prometheus_client chooses where
samples go when it is first imported, so this module does not import it, and the commands
enter `multiprocess_dir` before anything else does.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

ENV = "PROMETHEUS_MULTIPROC_DIR"
log = logging.getLogger(__name__)


@contextmanager
def multiprocess_dir(prefix: str) -> Iterator[str | None]:
    """A fresh folder for this run's samples (removed at the end), inherited by the processes
    started inside. A folder the operator set is used as it is (and must be emptied between
    runs, prometheus_client's rule). None when prometheus_client was imported already: the
    mode cannot be switched on any more, and each process then shows its own samples only."""
    if os.environ.get(ENV):
        yield os.environ[ENV]
        return
    if "prometheus_client" in sys.modules:
        log.warning("prometheus_client was imported before %s could be set", ENV)
        yield None
        return
    folder = tempfile.mkdtemp(prefix=prefix)
    os.environ[ENV] = folder
    try:
        yield folder
    finally:
        os.environ.pop(ENV, None)
        shutil.rmtree(folder, ignore_errors=True)
