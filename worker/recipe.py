"""A worker's hooks for core.pipeline's job recipe: the job's phases, the evaluation's texts and
the upload go through the lease, S3 and their outages; and the recipe's end in a worker, the
export committed with the job's success (`commit_export`). The runner (a whole job) and the
export item of a fanned-out job both build theirs here."""

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
from worker.outages import Dependency, through_outages
from worker.uploads import upload_export, write_manifest


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

    def publish(out: Path) -> list[dict[str, Any]] | None:
        phase(Phase.UPLOADING)
        try:
            return through_outages(
                lambda: upload_export(s3_client(settings), settings, out, job_id, should_stop),
                settings,
                on_retry=lease.note_retry,
                should_stop=should_stop,
            )
        except Exception:
            # A cancel or a lost lease stopped the upload (UploadStopped) or cut an outage's
            # wait short: the recipe sees the stop next, and ends the job cancelled.
            if should_stop():
                return None
            raise

    return JobHooks(
        phase=phase,
        checkpoint=checkpoint,
        progress=progress,
        should_stop=should_stop,
        refresh=lease.renew,
        evaluation_texts=evaluation_texts,
        publish=publish,
    )


def commit_export(
    lease: FencedLease,
    job_id: str,
    settings: Settings,
    files: list[dict[str, Any]],
    evaluation: dict[str, Any] | None,
    *,
    should_stop: Callable[[], bool],
    **final: Any,
) -> None:
    """The job succeeds: its manifest is written inside the success's transaction, which holds
    the job's row, so a cancel comes either before (the lease raises CancelRequested, or Stop
    for a work item, and no manifest is written) or after (409: the job succeeded). An S3
    outage at this step is waited out like the upload's; `final` goes to `lease.succeed`."""
    s3 = s3_client(settings)
    through_outages(
        lambda: lease.succeed(
            files,
            evaluation,
            commit=lambda: write_manifest(s3, settings, job_id, files),
            **final,
        ),
        settings,
        on_retry=lease.note_retry,
        should_stop=should_stop,
        only=(Dependency.S3,),
    )
