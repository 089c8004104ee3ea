"""S3 (AWS, MinIO, moto): the client and where a job's export lives, for the API's presigned
download URLs and the worker's uploads alike.

Newer boto3 sends CRC checksum headers by default, which MinIO and other S3-compatibles
reject or mishandle; checksums are sent only when an operation requires them.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from contract import UserError
from service.settings import Settings

MANIFEST_NAME = "manifest.json"


def s3_client(settings: Settings, *, public: bool = False, quick: bool = False) -> Any:
    """`public`: for presigned URLs handed to users. `quick`: one try, short timeouts (probes)."""
    endpoint = (settings.s3_public_endpoint_url if public else None) or settings.s3_endpoint_url
    config = Config(
        s3={"addressing_style": "path"},
        signature_version="s3v4",
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={
            "total_max_attempts": 1 if quick else settings.s3_max_attempts,
            "mode": "standard",
        },
        connect_timeout=3 if quick else settings.s3_connect_timeout_s,
        read_timeout=3 if quick else settings.s3_read_timeout_s,
    )
    return boto3.client("s3", endpoint_url=endpoint, region_name=settings.s3_region, config=config)


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


UPLOADS_PREFIX = "uploads/"  # every tenant's uploads, below it


def upload_prefix(tenant_id: str, upload_id: str) -> str:
    """Where a tenant's upload lives in the bucket (with upload_id "": all its uploads)."""
    tenant = f"{UPLOADS_PREFIX}{tenant_id}/"
    return f"{tenant}{upload_id}/" if upload_id else tenant


def parse_s3_uri(uri: str, field: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise UserError(field, f"expected s3://bucket/key, got {uri!r}")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise UserError(field, f"no bucket in {uri!r}")
    return bucket, key


def presigned_url(s3: Any, settings: Settings, job_id: str, name: str) -> str:
    return s3.generate_presigned_url(
        "get_object",
        Params={"Bucket": settings.s3_bucket, "Key": job_prefix(job_id) + name},
        ExpiresIn=settings.presign_ttl_s,
    )
