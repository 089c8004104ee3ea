"""Upload rows in PostgreSQL: create, read (a tenant's own only) and complete. The API's
/v1/uploads and the job inputs that name `upload:<id>` both go through here, as jobs go
through service.jobstore."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.tables import Tenant, Upload

UploadKind = Literal["model", "calibration"]


def create_upload(
    session: Session, tenant_id: str, upload_id: str, kind: UploadKind, files: list[dict[str, Any]]
) -> Upload:
    """A pending upload of `files` (name, size, sha256 and, for multipart files, the S3 upload id
    and its number of parts)."""
    upload = Upload(id=upload_id, tenant_id=tenant_id, kind=kind, status="pending", files=files)
    session.add(upload)
    session.flush()
    return upload


def get_upload(
    session: Session, tenant_id: str, upload_id: str, *, lock: bool = False
) -> Upload | None:
    """The tenant's upload; None for another tenant's, whose existence is not ours to reveal."""
    upload = session.get(Upload, upload_id, with_for_update=lock)
    return upload if upload is not None and upload.tenant_id == tenant_id else None


def pending_usage(session: Session, tenant_id: str) -> dict[str, int]:
    """What the tenant's pending uploads hold open: {"uploads", "bytes" declared, "parts"}. Locks
    the tenant's row until the transaction ends, so that two creations cannot both pass a quota
    on the same count."""
    session.get(Tenant, tenant_id, with_for_update=True)
    pending = session.scalars(
        select(Upload.files).where(Upload.tenant_id == tenant_id, Upload.status == "pending")
    ).all()
    files = [f for listed in pending for f in listed]
    return {
        "uploads": len(pending),
        "bytes": sum(int(f["size"]) for f in files),
        "parts": sum(int(f.get("parts", "multipart_id" in f)) for f in files),
    }


def abandoned(session: Session, older_than_s: float, limit: int = 100) -> list[Upload]:
    """Pending uploads created more than `older_than_s` ago, locked (SKIP LOCKED: one sweeper
    takes each), for the sweep to delete."""
    query = (
        select(Upload)
        .where(
            Upload.status == "pending",
            Upload.created_at < func.now() - timedelta(seconds=older_than_s),
        )
        .order_by(Upload.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.scalars(query))


def mark_complete(session: Session, upload: Upload, files: list[dict[str, Any]]) -> None:
    """Every file is in S3 with its announced size; `files` are the entries with their pinned
    ETags. Jobs may name it from now on."""
    upload.status, upload.completed_at, upload.files = "complete", func.now(), files
    session.flush()
    session.refresh(upload)
