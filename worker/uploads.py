"""Uploading a job's export to S3: every file verified, then the manifest, last.

The manifest is the export's commit point: a reader who sees manifest.json sees a complete
export, and a job is `succeeded` exactly when its manifest was written. `upload_export` puts the
files and stops between files, or within one (its transfer callback), once `should_stop` says
the job was cancelled or its lease lost; `write_manifest` is called by the lease's success, in
the transaction that holds the job's row (worker.leases.FencedLease.succeed), so a cancel is
decided either before it (no manifest; the cancel wins) or after it (409: already succeeded).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig

from contract.sources import sha256_file
from service.settings import Settings
from service.storage import MANIFEST_NAME, job_prefix

MIB = 2**20


class UploadVerificationError(RuntimeError):
    """An uploaded object does not match the local file (size or sha256)."""


class UploadStopped(Exception):
    """The job was cancelled, or its lease lost, during the upload: what was put is left to
    the ended job's sweep (worker.sweep.purge_job)."""


def upload_export(
    s3: Any,
    settings: Settings,
    out_dir: Path,
    job_id: str,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[dict]:
    """Upload every file of `out_dir` under s3://<bucket>/jobs/<id>/ (multipart above the
    threshold) and check each object's size and sha256. Returns the manifest's file list;
    raises UploadStopped as soon as `should_stop()` holds."""
    bucket, prefix = settings.s3_bucket, job_prefix(job_id)
    transfer = TransferConfig(
        multipart_threshold=settings.s3_multipart_threshold_mb * MIB,
        multipart_chunksize=settings.s3_multipart_chunk_mb * MIB,
    )

    def check(_bytes: int = 0) -> None:  # also boto3's progress callback, within a file
        if should_stop():
            raise UploadStopped(job_id)

    files = []
    for path in sorted(p for p in out_dir.rglob("*") if p.is_file()):
        check()
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
            Callback=check,
        )
        files.append(entry)
    for entry in files:  # verify before the export may be declared done
        head = s3.head_object(Bucket=bucket, Key=prefix + entry["name"])
        if (
            head["ContentLength"] != entry["size"]
            or head["Metadata"].get("sha256") != entry["sha256"]
        ):
            raise UploadVerificationError(
                f"s3://{bucket}/{prefix}{entry['name']}: stored object does not match the export"
            )
    check()
    return files


def write_manifest(s3: Any, settings: Settings, job_id: str, files: list[dict]) -> None:
    """The commit point of an uploaded export (see the module's docstring)."""
    manifest = json.dumps({"job_id": job_id, "files": files}, indent=2).encode()
    s3.put_object(
        Bucket=settings.s3_bucket,
        Key=job_prefix(job_id) + MANIFEST_NAME,
        Body=manifest,
        ContentType="application/json",
    )
