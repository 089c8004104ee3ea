"""`python tests/svc/slow_worker.py worker ...`: the product's worker, slowed on purpose so that a
test has time to kill, cancel or watch a job mid-search. The delays live here, not in the
worker's code paths: they wrap the worker's own methods before Celery forks its pool child.

BLOCKPRUNE_TEST_ITERATION_DELAY_S: seconds after each checkpointed search iteration (stopping
early once the job is to stop); BLOCKPRUNE_TEST_SCORE_DELAY_S: seconds after each committed
score of a fanned-out share; BLOCKPRUNE_TEST_UPLOAD_DELAY_S: seconds before each file of an
export's upload (and each of its progress callbacks), so a cancel can come mid-upload.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _slow_iterations(delay_s: float) -> None:
    from worker.runner import Reporter

    checkpoint = Reporter.iteration

    @functools.wraps(checkpoint)
    def iteration(self: Reporter, state: Any) -> None:
        checkpoint(self, state)
        deadline = time.monotonic() + delay_s
        while time.monotonic() < deadline and not self.should_stop():
            time.sleep(0.05)

    Reporter.iteration = iteration  # type: ignore[method-assign]


def _slow_scores(delay_s: float) -> None:
    from worker.items import ItemLease

    record = ItemLease.record

    @functools.wraps(record)
    def slow_record(self: ItemLease, *args: Any, **kwargs: Any) -> None:
        record(self, *args, **kwargs)
        time.sleep(delay_s)

    ItemLease.record = slow_record  # type: ignore[method-assign]


def _slow_uploads(delay_s: float) -> None:
    import worker.recipe
    from worker.uploads import upload_export

    @functools.wraps(upload_export)
    def slow_upload(*args: Any) -> Any:
        *head, should_stop = args

        def slowly() -> bool:
            time.sleep(delay_s)
            return should_stop()

        return upload_export(*head, slowly)

    worker.recipe.upload_export = slow_upload  # type: ignore[assignment]


def main() -> int:
    iteration_s = float(os.environ.get("BLOCKPRUNE_TEST_ITERATION_DELAY_S") or 0)
    score_s = float(os.environ.get("BLOCKPRUNE_TEST_SCORE_DELAY_S") or 0)
    if iteration_s:
        _slow_iterations(iteration_s)
    if score_s:
        _slow_scores(score_s)
    if upload_s := float(os.environ.get("BLOCKPRUNE_TEST_UPLOAD_DELAY_S") or 0):
        _slow_uploads(upload_s)
    from worker.commands import main as worker_main

    return worker_main()


if __name__ == "__main__":
    sys.exit(main())
