"""The service's tables. Migrations (migrations/versions) create them; keep both in step."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from contract import JobStatus

# The CHECK constraint's list (migration 0001 wrote the same values).
STATUSES = tuple(s.value for s in JobStatus)


def _now() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSONB, list[Any]: JSONB}


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # Signs this tenant's webhooks (HMAC); shown to the tenant once, when made or rotated.
    webhook_secret: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = _now()


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex; never the key
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to tell keys apart
    created_at: Mapped[datetime] = _now()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, Identity(), unique=True)  # list order, cursor
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # Changed only through service.transitions (the status machine); read as JobStatus(status).
    status: Mapped[str] = mapped_column(String(16))
    phase: Mapped[str | None] = mapped_column(String(16))  # a contract.Phase value
    spec: Mapped[dict[str, Any]]  # a contract.JobSpec, as JSON
    config_hash: Mapped[str] = mapped_column(String(64))
    # The tenant's own labels ("metadata" in the API; the name is taken on declarative classes).
    user_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    # The checkpoint: a contract.SearchState as JSON, committed after every search iteration.
    state: Mapped[dict[str, Any] | None]
    progress: Mapped[dict[str, Any] | None]  # a contract.Progress as JSON
    error: Mapped[dict[str, Any] | None]
    artifacts: Mapped[list[Any] | None]  # the uploaded manifest: [{name, size, sha256}]
    evaluation: Mapped[dict[str, Any] | None]  # the report, when the spec asks for one
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    max_attempts: Mapped[int] = mapped_column(Integer)
    # Shares per search iteration (service.fanout); 1 runs the whole search on one worker.
    parallelism: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # A fanned-out job's plan (contract.fanout_plan.FanoutPlan as JSON).
    plan: Mapped[dict[str, Any] | None]
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_token: Mapped[str | None] = mapped_column(String(36))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # A cancelled or failed job's prefix was emptied of what its attempts uploaded (worker.sweep).
    export_swept_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(f"status IN {STATUSES}", name="jobs_status_valid"),
        UniqueConstraint("tenant_id", "idempotency_key", name="jobs_tenant_idempotency_key"),
        Index("jobs_tenant_seq", "tenant_id", "seq"),
        Index(
            "jobs_leased_expiry",
            "lease_expires_at",
            postgresql_where="status IN ('running', 'cancelling')",
        ),
        Index(
            "jobs_to_sweep",
            "finished_at",
            postgresql_where="status IN ('cancelled', 'failed') AND export_swept_at IS NULL",
        ),
    )


class JobEvent(Base):
    """The job's history: state changes, each iteration's result, retries, errors."""

    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = _now()

    __table_args__ = (Index("job_events_job_id", "job_id", "id"),)


class WebhookDelivery(Base):
    """An outbox row, written in the same transaction as the job's final state, so a webhook is
    never lost nor sent for a state that was rolled back. The reaper delivers it."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]]
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = _now()
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    gave_up_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()

    __table_args__ = (
        Index(
            "webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where="delivered_at IS NULL AND gave_up_at IS NULL",
        ),
    )


class Upload(Base):
    """Files a tenant put in S3 through presigned URLs, under uploads/<tenant id>/<id>/: a model
    folder or one calibration file. Jobs name it `upload:<id>`."""

    __tablename__ = "uploads"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # "model" | "calibration"
    status: Mapped[str] = mapped_column(String(16))  # "pending" | "complete"
    # [{"name", "size", "sha256", "multipart_id"?, "parts"?, "etag"?}]: what was announced
    # (sizes checked against S3 on completion, ETags pinned then; the worker checks size and
    # sha256 before it uses a file). Older rows may lack sha256, parts and etag.
    files: Mapped[list[Any]]
    created_at: Mapped[datetime] = _now()
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("kind IN ('model', 'calibration')", name="uploads_kind_valid"),
        CheckConstraint("status IN ('pending', 'complete')", name="uploads_status_valid"),
        Index("uploads_tenant", "tenant_id", "created_at"),
    )


class WorkItem(Base):
    """A share of one search iteration's candidates (kind "score"), or the export after the last
    iteration (kind "export"), of a fanned-out job. Leased like jobs: SKIP LOCKED, heartbeat,
    fenced writes, attempts."""

    __tablename__ = "work_items"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(8))
    iteration: Mapped[int] = mapped_column(Integer)
    # 1 for an exact search; a racing one's stage k scores its survivors on the k-th slice
    stage: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    share: Mapped[int] = mapped_column(Integer)
    candidates: Mapped[list[Any]]  # contract.Block JSON, in paper order (older: [block, layer])
    status: Mapped[str] = mapped_column(String(12))  # queued, running, done, cancelled
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_token: Mapped[str | None] = mapped_column(String(36))
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("kind IN ('score', 'export')", name="work_items_kind_valid"),
        CheckConstraint(
            "status IN ('queued', 'running', 'done', 'cancelled')", name="work_items_status_valid"
        ),
        UniqueConstraint("job_id", "kind", "iteration", "stage", "share", name="work_items_once"),
        Index("work_items_job", "job_id", "iteration"),
    )


class CandidateScore(Base):
    """One candidate's PPL in one iteration (and stage, racing), committed as soon as it is
    scored."""

    __tablename__ = "candidate_scores"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    iteration: Mapped[int] = mapped_column(Integer, primary_key=True)
    stage: Mapped[int] = mapped_column(Integer, primary_key=True, default=1, server_default="1")
    block: Mapped[str] = mapped_column(String(3), primary_key=True)
    layer: Mapped[int] = mapped_column(Integer, primary_key=True)
    position: Mapped[int] = mapped_column(Integer)  # in paper order: ties go to the lowest
    # Racing: the PPL on the sequences seen so far (every one after the last stage), and each
    # sequence's mean NLL in this stage's slice (what the next stage's cut is decided on).
    ppl: Mapped[float] = mapped_column(Float(precision=53))
    nlls: Mapped[list[Any] | None]
    times_scored: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    worker: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = _now()


class OutboxMessage(Base):
    """A queue message to send: written in the same transaction as the change that calls for
    it (a job created or re-queued, a work item made), sent by the relay (service.outbox)."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    kind: Mapped[str] = mapped_column(String(4))  # job, item
    ref: Mapped[str] = mapped_column(String(36))  # the job's id, or the work item's
    send_after: Mapped[datetime] = _now()
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()

    __table_args__ = (
        CheckConstraint("kind IN ('job', 'item')", name="outbox_kind_valid"),
        Index("outbox_due", "send_after"),
    )
