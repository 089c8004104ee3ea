"""Upload rows in PostgreSQL: create, read (a tenant's own only) and complete. The API's
/v1/uploads and the job inputs that name `upload:<id>` both go through here, as jobs go
through service.jobstore."""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import func
from sqlalchemy.orm import Session

from service.tables import Upload

UploadKind = Literal["model", "calibration"]


def create_upload(
    session: Session, tenant_id: str, upload_id: str, kind: UploadKind, files: list[dict[str, Any]]
) -> Upload:
    """A pending upload of `files` (name, size and, for multipart files, the S3 upload id)."""
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


def mark_complete(session: Session, upload: Upload) -> None:
    """Every file is in S3 with its announced size: jobs may name it from now on."""
    upload.status, upload.completed_at = "complete", func.now()
    session.flush()
    session.refresh(upload)
