"""/v1/uploads: a tenant puts a model folder or a calibration file in S3 through presigned URLs,
under uploads/<tenant id>/<upload id>/, and names it in jobs as `upload:<id>`.

1. POST /v1/uploads with the file names and sizes: presigned PUT URLs, and for files above the
   multipart threshold one URL per part.
2. PUT each file (or part) to its URL; keep each part's ETag header.
3. POST /v1/uploads/{id}/complete with the parts' ETags: the service finishes the multipart
   uploads and checks every file's size in S3. Then jobs may use it.
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


class FileSpec(BaseModel):
    name: str = Field(pattern=FILE_NAME, description="the file's name, e.g. config.json")
    size: int = Field(ge=0, strict=True, description="its size in bytes (checked on completion)")


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
    upload_id = str(uuid.uuid4())
    prefix = upload_prefix(tenant, upload_id)
    s3, public = s3_client(settings), s3_client(settings, public=True)
    part_size = settings.s3_multipart_chunk_mb * MIB
    files: list[dict[str, Any]] = []
    views = []
    for f in body.files:
        key = prefix + f.name
        entry: dict[str, Any] = {"name": f.name, "size": f.size}
        if f.size > settings.s3_multipart_threshold_mb * MIB:
            multipart = s3.create_multipart_upload(Bucket=settings.s3_bucket, Key=key)
            entry["multipart_id"] = multipart["UploadId"]
            count = math.ceil(f.size / part_size)
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
            url = _presign(public, settings, "put_object", key, {})
            views.append(UploadFile(name=f.name, size=f.size, url=url))
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
    """Finish the multipart files and check that every file is in S3 with its announced size.
    Completing a complete upload again changes nothing."""
    upload = _own_upload(session, tenant, upload_id, lock=True)
    if upload.status == "pending":
        s3 = s3_client(settings)
        prefix = upload_prefix(tenant, upload.id)
        for f in upload.files:
            if "multipart_id" in f:
                _finish_multipart(s3, settings, prefix + f["name"], f, body.parts.get(f["name"]))
            _check_stored(s3, settings, prefix + f["name"], f)
        uploadstore.mark_complete(session, upload)
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


def _check_stored(s3: Any, settings: Settings, key: str, f: dict) -> None:
    try:
        size = s3.head_object(Bucket=settings.s3_bucket, Key=key)["ContentLength"]
    except s3.exceptions.ClientError:
        raise _invalid("files", f"{f['name']} was not uploaded") from None
    if size != f["size"]:
        raise _invalid("files", f"{f['name']} is {size} bytes, announced {f['size']}")


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
