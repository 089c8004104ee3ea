"""/v1/uploads: a tenant puts a model folder or a calibration file in S3 through presigned URLs,
under uploads/<tenant id>/<upload id>/, and names it in jobs as `upload:<id>`.

1. POST /v1/uploads with the file names, sizes and sha256: presigned PUT URLs, and for files
   above the multipart threshold one URL per part. A tenant's pending uploads are bounded (count,
   declared bytes, parts: BLOCKPRUNE_TENANT_MAX_PENDING_*), and swept when abandoned.
2. PUT each file (or part) to its URL, with the `headers` given; keep each part's ETag header.
3. POST /v1/uploads/{id}/complete with the parts' ETags: the service finishes the multipart
   uploads, checks every file's size in S3 and pins its ETag. Then jobs may use it.

No URL writes after that: a whole-file URL is signed with `If-None-Match: *` (S3 refuses a PUT
over an existing object, and the signature refuses one without the header), and a part's URL
names a multipart upload that completing ended. The worker checks each file's size and sha256
against this row before it uses them (worker.downloads), whatever happened in S3 meanwhile.
"""

from __future__ import annotations

import math
import uuid
from typing import Any, Literal

from fastapi import APIRouter, status
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from api.deps import SessionDep, SettingsDep, TenantDep
from api.errors import ERROR_RESPONSES, ApiError, check_id, not_found
from contract import ErrorCode
from contract.sources import CALIBRATION_SUFFIXES, SAFE_SUFFIXES, pickle_refusal
from service import uploadstore
from service.settings import Settings
from service.storage import s3_client, upload_prefix
from service.tables import Upload

router = APIRouter(prefix="/uploads", tags=["uploads"], responses=ERROR_RESPONSES)
MIB = 2**20
FILE_NAME = r"^[A-Za-z0-9_][A-Za-z0-9._\-]{0,199}$"  # one folder level: no paths, no dot files
S3_MAX_PARTS = 10_000  # of one multipart upload, in S3 and MinIO
WRITE_ONCE = {"If-None-Match": "*"}  # signed into whole-file URLs: no PUT over what is there


class FileSpec(BaseModel):
    name: str = Field(pattern=FILE_NAME, description="the file's name, e.g. config.json")
    size: int = Field(ge=0, strict=True, description="its size in bytes (checked on completion)")
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="its SHA-256, hex: the worker checks it before it uses the file",
    )


class UploadCreate(BaseModel):
    kind: Literal["model", "calibration"] = Field(
        description="model: config.json, tokenizer files and *.safetensors; calibration: one "
        ".txt or .jsonl file"
    )
    files: list[FileSpec] = Field(min_length=1)


class PartUrl(BaseModel):
    part_number: int
    url: str


class UploadFile(BaseModel):
    name: str
    size: int
    url: str | None = Field(None, description="PUT the whole file here (small files)")
    headers: dict[str, str] | None = Field(
        None, description="send these headers with that PUT (they are part of its signature)"
    )
    parts: list[PartUrl] | None = Field(
        None, description="or PUT each part_size_bytes slice here, in order (large files)"
    )


class UploadView(BaseModel):
    id: str
    kind: str
    status: Literal["pending", "complete"]
    ref: str = Field(description="what a job's model or calibration field names: upload:<id>")
    files: list[UploadFile]
    part_size_bytes: int
    expires_in: int | None = Field(None, description="seconds the URLs stay valid")


class PartETag(BaseModel):
    part_number: int = Field(ge=1, le=10000)
    etag: str = Field(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")


class UploadComplete(BaseModel):
    parts: dict[str, list[PartETag]] = Field(
        default_factory=dict, description="the ETag of every part, for each multipart file"
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=UploadView)
def create_upload(
    body: UploadCreate, session: SessionDep, tenant: TenantDep, settings: SettingsDep
) -> UploadView:
    _check_files(body, settings)
    _check_quota(session, tenant, body, settings)  # locks the tenant's row until the commit
    upload_id = str(uuid.uuid4())
    prefix = upload_prefix(tenant, upload_id)
    s3, public = s3_client(settings), s3_client(settings, public=True)
    part_size = settings.s3_multipart_chunk_mb * MIB
    files: list[dict[str, Any]] = []
    views = []
    for f in body.files:
        key = prefix + f.name
        entry: dict[str, Any] = {"name": f.name, "size": f.size, "sha256": f.sha256}
        count = _parts(f.size, settings)
        if count:
            multipart = s3.create_multipart_upload(Bucket=settings.s3_bucket, Key=key)
            entry["multipart_id"], entry["parts"] = multipart["UploadId"], count
            parts = [
                PartUrl(
                    part_number=n,
                    url=_presign(
                        public,
                        settings,
                        "upload_part",
                        key,
                        {"UploadId": multipart["UploadId"], "PartNumber": n},
                    ),
                )
                for n in range(1, count + 1)
            ]
            views.append(UploadFile(name=f.name, size=f.size, parts=parts))
        else:
            url = _presign(public, settings, "put_object", key, {"IfNoneMatch": "*"})
            views.append(UploadFile(name=f.name, size=f.size, url=url, headers=WRITE_ONCE))
        files.append(entry)
    uploadstore.create_upload(session, tenant, upload_id, body.kind, files)
    session.commit()
    return UploadView(
        id=upload_id,
        kind=body.kind,
        status="pending",
        ref=f"upload:{upload_id}",
        files=views,
        part_size_bytes=part_size,
        expires_in=settings.presign_ttl_s,
    )


@router.post("/{upload_id}/complete", response_model=UploadView)
def complete_upload(
    upload_id: str,
    body: UploadComplete,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
) -> UploadView:
    """Finish the multipart files, check that every file is in S3 with its announced size and
    pin its ETag. Completing a complete upload again changes nothing."""
    upload = _own_upload(session, tenant, upload_id, lock=True)
    if upload.status == "pending":
        s3 = s3_client(settings)
        prefix = upload_prefix(tenant, upload.id)
        pinned = []
        for f in upload.files:
            if "multipart_id" in f:
                _finish_multipart(s3, settings, prefix + f["name"], f, body.parts.get(f["name"]))
            pinned.append({**f, "etag": _check_stored(s3, settings, prefix + f["name"], f)})
        uploadstore.mark_complete(session, upload, pinned)
        session.commit()
    return _view(upload, settings)


@router.get("/{upload_id}", response_model=UploadView)
def get_upload(
    upload_id: str, session: SessionDep, tenant: TenantDep, settings: SettingsDep
) -> UploadView:
    return _view(_own_upload(session, tenant, upload_id), settings)


def _check_files(body: UploadCreate, settings: Settings) -> None:
    names = [f.name for f in body.files]
    if len(names) != len(set(names)):
        raise _invalid("files", "a file name appears twice")
    if len(names) > settings.upload_max_files:
        raise _invalid("files", f"at most {settings.upload_max_files} files per upload")
    for n, f in enumerate(body.files):
        if f.size > settings.upload_max_file_mb * MIB:
            raise _invalid(f"files.{n}.size", f"at most {settings.upload_max_file_mb} MiB a file")
        if _parts(f.size, settings) > S3_MAX_PARTS:  # S3 would refuse to complete it
            raise _invalid(
                f"files.{n}.size",
                f"over {S3_MAX_PARTS:,} parts of {settings.s3_multipart_chunk_mb} MiB "
                "(BLOCKPRUNE_S3_MULTIPART_CHUNK_MB)",
            )
    if body.kind == "calibration":
        if len(names) != 1 or not names[0].endswith(CALIBRATION_SUFFIXES):
            raise _invalid("files", "a calibration upload is one .txt or .jsonl file")
        return
    refusal = pickle_refusal(names)
    if refusal is not None:
        raise _invalid("files", refusal)
    other = [n for n in names if not n.endswith(SAFE_SUFFIXES)]
    if other:
        raise _invalid("files", f"not a model file the service reads: {', '.join(other)}")
    if "config.json" not in names or not any(n.endswith(".safetensors") for n in names):
        raise _invalid("files", "a model upload needs config.json and *.safetensors weights")


def _parts(size: int, settings: Settings) -> int:
    """The presigned parts of a file of `size` bytes: 0 for one whole-file PUT."""
    if size <= settings.s3_multipart_threshold_mb * MIB:
        return 0
    return math.ceil(size / (settings.s3_multipart_chunk_mb * MIB))


def _check_quota(session: Session, tenant: str, body: UploadCreate, settings: Settings) -> None:
    """What the tenant's pending uploads hold open in S3, with this one, within its quotas: 413
    for an upload over a quota by itself, else 429 until some complete or are swept."""
    held = uploadstore.pending_usage(session, tenant)
    adds = {
        "uploads": 1,
        "bytes": sum(f.size for f in body.files),
        "parts": sum(_parts(f.size, settings) for f in body.files),
    }
    limits = {
        "uploads": (settings.tenant_max_pending_uploads, "BLOCKPRUNE_TENANT_MAX_PENDING_UPLOADS"),
        "bytes": (
            int(settings.tenant_max_pending_upload_gb * 2**30),
            "BLOCKPRUNE_TENANT_MAX_PENDING_UPLOAD_GB",
        ),
        "parts": (settings.tenant_max_pending_parts, "BLOCKPRUNE_TENANT_MAX_PENDING_PARTS"),
    }
    for what, (limit, setting) in limits.items():
        if adds[what] > limit:
            raise ApiError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"files: this upload declares {adds[what]:,} {what}, over the {limit:,} a tenant "
                f"may hold pending ({setting})",
                field="files",
            )
        if held[what] + adds[what] > limit:
            raise ApiError(
                ErrorCode.QUOTA_EXCEEDED,
                f"files: this tenant's pending uploads hold {held[what]:,} {what}; with this one "
                f"{held[what] + adds[what]:,}, over the {limit:,} allowed ({setting}). Complete "
                f"or abandon some: a pending upload is swept after "
                f"{settings.upload_ttl_s:g} s (BLOCKPRUNE_UPLOAD_TTL_S)",
                field="files",
                headers={"Retry-After": str(settings.quota_retry_after_s)},
            )


def _finish_multipart(
    s3: Any, settings: Settings, key: str, f: dict, parts: list[PartETag] | None
) -> None:
    expected = math.ceil(f["size"] / (settings.s3_multipart_chunk_mb * MIB))
    numbers = sorted(p.part_number for p in parts or [])
    if numbers != list(range(1, expected + 1)):
        raise _invalid(f"parts.{f['name']}", f"give the ETag of each of its {expected} parts")
    try:
        s3.complete_multipart_upload(
            Bucket=settings.s3_bucket,
            Key=key,
            UploadId=f["multipart_id"],
            MultipartUpload={
                "Parts": [
                    {"PartNumber": p.part_number, "ETag": p.etag}
                    for p in sorted(parts or [], key=lambda p: p.part_number)
                ]
            },
        )
    except s3.exceptions.ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("InvalidPart", "InvalidPartOrder", "NoSuchUpload", "EntityTooSmall"):
            raise _invalid(f"parts.{f['name']}", f"S3 refused the parts ({code})") from None
        raise


def _check_stored(s3: Any, settings: Settings, key: str, f: dict) -> str:
    """The stored object's ETag, once its size is the announced one."""
    try:
        head = s3.head_object(Bucket=settings.s3_bucket, Key=key)
    except s3.exceptions.ClientError:
        raise _invalid("files", f"{f['name']} was not uploaded") from None
    if head["ContentLength"] != f["size"]:
        raise _invalid(
            "files", f"{f['name']} is {head['ContentLength']} bytes, announced {f['size']}"
        )
    return str(head["ETag"])


def _own_upload(session: Session, tenant: str, upload_id: str, lock: bool = False) -> Upload:
    upload = uploadstore.get_upload(session, tenant, check_id(upload_id, "upload"), lock=lock)
    if upload is None:
        raise not_found(upload_id, "upload")
    return upload


def _view(upload: Upload, settings: Settings) -> UploadView:
    return UploadView(
        id=upload.id,
        kind=upload.kind,
        status=upload.status,  # type: ignore[arg-type]
        ref=f"upload:{upload.id}",
        files=[UploadFile(name=f["name"], size=f["size"]) for f in upload.files],
        part_size_bytes=settings.s3_multipart_chunk_mb * MIB,
    )


def _presign(s3: Any, settings: Settings, operation: str, key: str, extra: dict) -> str:
    params = {"Bucket": settings.s3_bucket, "Key": key, **extra}
    return s3.generate_presigned_url(operation, Params=params, ExpiresIn=settings.presign_ttl_s)


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(ErrorCode.INVALID_REQUEST, f"{field}: {message}", field=field)
