"""Which inputs a tenant may name: checked when a job is submitted, and again by the worker
right before it reads anything (a job row could have been written some other way).

A tenant reads only its own uploads (`upload:<id>`, or `s3://<bucket>/uploads/<tenant id>/...`),
the operator's shared prefixes (`BLOCKPRUNE_S3_SHARED_PREFIXES`), `builtin:` sources, and `hf:`
sources where the operator allows them. Anything else is refused before anything is listed or
downloaded, and the refusal repeats nothing but what the tenant itself wrote.
"""

from __future__ import annotations

import re

from sqlalchemy.orm import Session

from contract import ErrorCode, JobSpec, UserError
from service.settings import Settings
from service.storage import parse_s3_uri, upload_prefix
from service.tables import Upload
from service.uploadstore import get_upload

UPLOAD_REF = re.compile(r"^upload:([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")


def resolve_input(
    session: Session,
    settings: Settings,
    tenant_id: str,
    field: str,
    source: str,
    kind: str | None = None,
) -> str:
    """The source to read for the job's `field` ("model", "calibration", "evaluation.data[0]"):
    an s3:// URI within the tenant's reach, or the builtin:/hf: source itself. A UserError for
    anything else. `kind`: the upload kind it must be (default: the field)."""
    if source.startswith("builtin:"):
        return source
    if source.startswith("hf:"):
        _check_hub(settings, field, source)
        return source
    if source.startswith("upload:"):
        return _resolve_upload(session, settings, tenant_id, field, source, kind or field)
    if source.startswith("s3://"):
        _check_s3(settings, tenant_id, field, source)
        return source
    raise _refused(field, "the service reads upload:, s3://, hf: and builtin: sources only")


def resolve_evaluation_data(
    session: Session, settings: Settings, tenant_id: str, spec: JobSpec
) -> dict[str, str]:
    """{source: what to read} for each text source of the job's evaluation, by the same reach
    as the calibration text (a text upload is a "calibration" upload)."""
    sources = spec.evaluation.data if spec.evaluation is not None else []
    return {
        source: resolve_input(
            session, settings, tenant_id, f"evaluation.data[{n}]", source, kind="calibration"
        )
        for n, source in enumerate(sources)
    }


def _resolve_upload(
    session: Session, settings: Settings, tenant_id: str, field: str, source: str, kind: str
) -> str:
    upload = _named_upload(session, tenant_id, source)
    if upload is None:  # none, or another tenant's: "no such upload" either way
        raise UserError(field, f"no upload {source.removeprefix('upload:')!r}", ErrorCode.NOT_FOUND)
    if upload.kind != kind:
        raise UserError(field, f"{source} is a {upload.kind} upload, not a {kind}")
    if upload.status != "complete":
        message = f"{source} is not complete: POST /v1/uploads/{upload.id}/complete first"
        raise UserError(field, message, ErrorCode.UPLOAD_INCOMPLETE)
    prefix = f"s3://{settings.s3_bucket}/{upload_prefix(tenant_id, upload.id)}"
    return prefix if kind == "model" else prefix + upload.files[0]["name"]


def upload_pins(session: Session, tenant_id: str, source: str) -> dict[str, dict] | None:
    """{file name: its row entry (size, sha256, etag)} of a complete `upload:<id>` source, which
    the worker checks the objects against before it uses them; None for any other source."""
    upload = _named_upload(session, tenant_id, source)
    if upload is None or upload.status != "complete":
        return None
    return {f["name"]: f for f in upload.files}


def _named_upload(session: Session, tenant_id: str, source: str) -> Upload | None:
    """The tenant's upload that `source` (upload:<id>) names; None for another source, a
    malformed id, no such upload or another tenant's."""
    match = UPLOAD_REF.match(source)
    return get_upload(session, tenant_id, match.group(1)) if match else None


def _check_s3(settings: Settings, tenant_id: str, field: str, source: str) -> None:
    bucket, key = parse_s3_uri(source, field)
    own = upload_prefix(tenant_id, "")  # uploads/<tenant id>/
    reachable = [own, *settings.shared_prefixes()]
    segments = key.split("/")
    if (
        bucket != settings.s3_bucket
        or ".." in segments
        or "" in segments[:-1]  # "a//b": S3 keys are literal, but no two spellings of a place
        or not any(key.startswith(prefix) for prefix in reachable)
    ):
        shared = ", ".join(f"s3://{settings.s3_bucket}/{p}" for p in settings.shared_prefixes())
        where = f"s3://{settings.s3_bucket}/{own}" + (
            f" or a shared prefix ({shared})" if shared else ""
        )
        raise _refused(
            field, f"{source} is outside what this tenant may read: use an upload, {where}"
        )


def _check_hub(settings: Settings, field: str, source: str) -> None:
    if not settings.hf_allowed:
        raise _refused(field, "hf: sources are turned off by the operator; upload the files")
    orgs = settings.hf_orgs()
    if field == "model" and orgs:
        org = source.removeprefix("hf:").split("/", 1)[0]
        if org not in orgs:
            raise _refused(field, f"hf: models come only from {', '.join(orgs)} here")


def _refused(field: str, message: str) -> UserError:
    return UserError(field, message, ErrorCode.INPUT_NOT_ALLOWED)
