"""A worker's hooks for core.pipeline's job recipe: the job's phases, the evaluation's texts and
the upload go through the lease, S3 and their outages. The runner (a whole job) and the export
item of a fanned-out job both build theirs here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from contract import JobSpec, Phase, Progress, SearchState
from core.pipeline import JobHooks
from service.settings import Settings
from service.storage import s3_client
from worker.job_inputs import fetch_evaluation_data
from worker.leases import FencedLease
from worker.outages import through_outages
from worker.uploads import upload_export


def worker_hooks(
    lease: FencedLease,
    job_id: str,
    tenant_id: str,
    spec: JobSpec,
    settings: Settings,
    *,
    phase: Callable[[Phase], None],
    should_stop: Callable[[], bool],
    checkpoint: Callable[[SearchState], None] | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> JobHooks:
    """The recipe's hooks for job `job_id` held by `lease`: before each step after the search,
    the lease is renewed (a lease taken over raises LeaseLost; a cancel is read, or for a work
    item raises Stop); the evaluation's texts are fetched and the export uploaded through S3
    outages, in the phase `uploading`."""

    def evaluation_texts() -> dict[str, str]:
        return through_outages(
            lambda: fetch_evaluation_data(spec, tenant_id, settings),
            settings,
            on_retry=lease.note_retry,
            should_stop=should_stop,
        )

    def publish(out: Path) -> list[dict[str, Any]]:
        phase(Phase.UPLOADING)
        return through_outages(
            lambda: upload_export(s3_client(settings), settings, out, job_id),
            settings,
            on_retry=lease.note_retry,
            should_stop=should_stop,
        )

    return JobHooks(
        phase=phase,
        checkpoint=checkpoint,
        progress=progress,
        should_stop=should_stop,
        refresh=lease.renew,
        evaluation_texts=evaluation_texts,
        publish=publish,
    )
