"""Uploading a job's export to S3: every file verified, the manifest last."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig

from contract.sources import sha256_file
from service.settings import Settings
from service.storage import MANIFEST_NAME, job_prefix

MIB = 2**20


class UploadVerificationError(RuntimeError):
    """An uploaded object does not match the local file (size or sha256)."""


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
