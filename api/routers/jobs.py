"""/v1/jobs: create, read, list, cancel, history and artifacts of a tenant's pruning jobs."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status

from api.deps import RelayDep, SessionDep, SettingsDep, TenantDep
from api.errors import ERROR_RESPONSES, ApiError, check_id, not_found
from api.schemas import (
    ArtifactFile,
    Artifacts,
    EventList,
    EventView,
    JobCreate,
    JobList,
    JobView,
)
from contract import ErrorCode, JobStatus, UserError
from contract.text import check_clean_text
from service import jobstore, outbox, transitions
from service.fit import check_bounds, check_fits
from service.inputs import resolve_evaluation_data, resolve_input
from service.storage import presigned_url, s3_client

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=ERROR_RESPONSES)
log = logging.getLogger(__name__)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobView)
def create_job(
    body: JobCreate,
    response: Response,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    relay: RelayDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> JobView:
    """Queue a job. With an `Idempotency-Key`, a retry returns the job the first call made
    (200); the same key with a different body is a 409. Its inputs must be the tenant's own
    uploads, shared prefixes, builtin: or allowed hf: sources (checked again by the worker), and
    its search must fit a worker's declared memory (`does_not_fit`, with the sums)."""
    if idempotency_key is not None:
        _clean("Idempotency-Key", idempotency_key)
    try:
        model = resolve_input(session, settings, tenant, "model", body.model)
        resolve_input(session, settings, tenant, "calibration", body.calibration)
        resolve_evaluation_data(session, settings, tenant, body.spec())
        check_bounds(settings, body.spec())
        check_fits(settings, body.spec(), model)
    except UserError as e:
        raise ApiError(e.code, str(e), field=e.field) from None
    try:
        job, created = jobstore.create_job(
            session,
            tenant_id=tenant,
            spec=body.spec(),
            user_metadata=body.metadata,
            webhook_url=str(body.webhook_url) if body.webhook_url else None,
            idempotency_key=idempotency_key,
            request_hash=body.request_hash(),
            max_attempts=settings.max_attempts,
            parallelism=body.parallelism or settings.default_parallelism,
            max_active=settings.tenant_max_active_jobs,
        )
    except jobstore.QuotaExceeded as e:
        raise ApiError(
            ErrorCode.QUOTA_EXCEEDED,
            f"this tenant already has {e} queued or running jobs, the most allowed "
            "(BLOCKPRUNE_TENANT_MAX_ACTIVE_JOBS); cancel one or wait for one to finish",
            headers={"Retry-After": str(settings.quota_retry_after_s)},
        ) from None
    except jobstore.IdempotencyConflict as e:
        raise ApiError(
            ErrorCode.IDEMPOTENCY_KEY_REUSED,
            f"this Idempotency-Key was used for job {e} with a different request body",
            field="Idempotency-Key",
        ) from None
    if created:
        outbox.add(session, "job", job.id)  # committed with the job: its message is on the way
    session.commit()
    if created:
        if relay is not None:
            relay.kick()  # sent from the relay's thread: a down or hung broker never holds a POST
    else:
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"
    return JobView.of(job)


def _clean(field: str, value: str) -> None:
    try:
        check_clean_text(value)
    except ValueError as e:
        raise ApiError(ErrorCode.INVALID_REQUEST, f"{field}: {e}", field=field) from None


@router.get("", response_model=JobList)
def list_jobs(
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1)] = 20,
    after: Annotated[str | None, Query(description="last job id of the previous page")] = None,
    status: JobStatus | None = None,
) -> JobList:
    if after is not None:
        try:
            check_id(after)
        except ApiError:
            raise ApiError(
                ErrorCode.INVALID_REQUEST, "after: must be a job id (a UUID)", "after"
            ) from None
    if limit > settings.api_page_size_max:
        raise ApiError(ErrorCode.INVALID_REQUEST, f"at most {settings.api_page_size_max}", "limit")
    try:
        jobs, has_more = jobstore.list_jobs(
            session, tenant, limit=limit, after=after, status=status
        )
    except jobstore.UnknownCursor:
        raise ApiError(
            ErrorCode.INVALID_REQUEST, f"no job {after} to page after", "after"
        ) from None
    return JobList(data=[JobView.of(j) for j in jobs], has_more=has_more)


@router.get("/{job_id}", response_model=JobView)
def get_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobView:
    job = jobstore.get_job(session, tenant, check_id(job_id))
    if job is None:
        raise not_found(job_id)
    return JobView.of(job)


@router.post("/{job_id}/cancel", response_model=JobView)
def cancel_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobView:
    """Idempotent. A queued job is cancelled at once; a running one becomes `cancelling` and
    stops at its next checkpoint. A job that already succeeded or failed is a 409."""
    job = jobstore.get_job(session, tenant, check_id(job_id), lock=True)
    if job is None:
        raise not_found(job_id)
    if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        raise ApiError(ErrorCode.JOB_FINISHED, f"job {job_id} already {job.status}")
    transitions.request_cancel(session, job)
    session.commit()
    return JobView.of(job)


@router.get("/{job_id}/events", response_model=EventList)
def job_events(job_id: str, session: SessionDep, tenant: TenantDep) -> EventList:
    if jobstore.get_job(session, tenant, check_id(job_id)) is None:
        raise not_found(job_id)
    events = jobstore.list_events(session, job_id)
    return EventList(
        data=[EventView(id=e.id, kind=e.kind, data=e.data, created_at=e.created_at) for e in events]
    )


@router.get("/{job_id}/artifacts", response_model=Artifacts)
def job_artifacts(
    job_id: str, session: SessionDep, tenant: TenantDep, settings: SettingsDep
) -> Artifacts:
    """The export's files, each with a presigned download URL."""
    job = jobstore.get_job(session, tenant, check_id(job_id))
    if job is None:
        raise not_found(job_id)
    if job.status != JobStatus.SUCCEEDED or not job.artifacts:
        raise ApiError(
            ErrorCode.NOT_READY, f"job {job_id} is {job.status}; artifacts come with success"
        )
    s3 = s3_client(settings, public=True)
    files = [
        ArtifactFile(**f, url=presigned_url(s3, settings, job_id, f["name"])) for f in job.artifacts
    ]
    return Artifacts(files=files, expires_in=settings.presign_ttl_s)
