"""S3 (AWS, MinIO, moto): the client, uploading a job's export, presigned download URLs.

Newer boto3 sends CRC checksum headers by default, which MinIO and other S3-compatibles
reject or mishandle; checksums are sent only when an operation requires them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from worker.settings import Settings

MIB = 2**20
MANIFEST_NAME = "manifest.json"


class UploadVerificationError(RuntimeError):
    """An uploaded object does not match the local file (size or sha256)."""


def s3_client(settings: Settings, *, public: bool = False, quick: bool = False) -> Any:
    """`public`: for presigned URLs handed to users. `quick`: one try, short timeouts (probes)."""
    endpoint = (settings.s3_public_endpoint_url if public else None) or settings.s3_endpoint_url
    config = Config(
        s3={"addressing_style": "path"},
        signature_version="s3v4",
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 1 if quick else 5, "mode": "standard"},
        connect_timeout=3 if quick else 60,
        read_timeout=3 if quick else 60,
    )
    return boto3.client("s3", endpoint_url=endpoint, region_name=settings.s3_region, config=config)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def upload_export(s3: Any, settings: Settings, out_dir: Path, job_id: str) -> list[dict]:
    """Upload every file of `out_dir` under s3://<bucket>/jobs/<id>/ (multipart above the
    threshold), check each object's size and sha256, then write the manifest last: a reader
    who sees manifest.json sees a complete export. Returns the manifest's file list."""
    bucket, prefix = settings.s3_bucket, job_prefix(job_id)
    transfer = TransferConfig(
        multipart_threshold=settings.s3_multipart_threshold_mb * MIB,
        multipart_chunksize=settings.s3_multipart_chunk_mb * MIB,
    )
    files = []
    for path in sorted(p for p in out_dir.rglob("*") if p.is_file()):
        name = path.relative_to(out_dir).as_posix()
        entry: dict[str, Any] = {
            "name": name,
            "size": path.stat().st_size,
            "sha256": sha256_file(path),
        }
        s3.upload_file(
            str(path),
            bucket,
            prefix + name,
            ExtraArgs={"Metadata": {"sha256": entry["sha256"]}},
            Config=transfer,
        )
        files.append(entry)
    for entry in files:  # verify before declaring the upload done
        head = s3.head_object(Bucket=bucket, Key=prefix + entry["name"])
        if (
            head["ContentLength"] != entry["size"]
            or head["Metadata"].get("sha256") != entry["sha256"]
        ):
            raise UploadVerificationError(
                f"s3://{bucket}/{prefix}{entry['name']}: stored object does not match the export"
            )
    manifest = json.dumps({"job_id": job_id, "files": files}, indent=2).encode()
    s3.put_object(
        Bucket=bucket, Key=prefix + MANIFEST_NAME, Body=manifest, ContentType="application/json"
    )
    return files


def presigned_url(s3: Any, settings: Settings, job_id: str, name: str) -> str:
    return s3.generate_presigned_url(
        "get_object",
        Params={"Bucket": settings.s3_bucket, "Key": job_prefix(job_id) + name},
        ExpiresIn=settings.presign_ttl_s,
    )
