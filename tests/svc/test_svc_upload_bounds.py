"""Uploads bounded and pinned (issue 27, items 1 and 2): a tenant's pending uploads have quotas
and are swept when abandoned; after /complete no presigned URL writes, and the worker refuses a
file that is not the one completed."""

from __future__ import annotations

import hashlib
import uuid

import httpx
import pytest
from security.helpers import announce, upload

from svc.fixtures import BUCKET, _new_key
from svc.helpers import job_body, wait_for

GIB = 2**30


@pytest.fixture
def tenant(database) -> dict:
    """A tenant of its own: the quotas count only its pending uploads."""
    return {"Authorization": f"Bearer {_new_key(f'tenant-up-{uuid.uuid4().hex[:8]}')}"}


def settings_with(service, **update):
    from service.settings import get_settings

    changed = get_settings().model_copy(update=update)
    service.app.dependency_overrides[get_settings] = lambda: changed
    return changed


def open_multipart(s3) -> set[str]:
    return {u["UploadId"] for u in s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])}


def declare(name: str, size: int) -> dict:
    return {"name": name, "size": size, "sha256": "0" * 64}


def test_the_reviews_amplification_is_refused_before_s3_is_touched(service, tenant, s3_server):
    """8 safetensors of 64 GiB each in a 1.3 KB request: 8,192 presigned parts and 8 multipart
    uploads before; now a 413 naming the setting, and nothing opened in S3."""
    before = open_multipart(s3_server)
    files = [declare("config.json", 10)] + [
        declare(f"m-{n}.safetensors", 64 * GIB) for n in range(8)
    ]
    answer = service.post("/v1/uploads", json={"kind": "model", "files": files}, headers=tenant)
    assert answer.status_code == 413, answer.text
    error = answer.json()["error"]
    assert error["code"] == "payload_too_large" and error["field"] == "files"
    assert "BLOCKPRUNE_TENANT_MAX_PENDING_UPLOAD_GB" in error["message"], error
    assert open_multipart(s3_server) == before


def test_pending_uploads_are_counted_per_tenant(service, tenant, key_b, s3_server):
    calibration = {"kind": "calibration", "files": [declare("t.txt", 3)]}
    settings_with(
        service,
        tenant_max_pending_uploads=2,
        tenant_max_pending_parts=4,
        s3_multipart_threshold_mb=5,
        s3_multipart_chunk_mb=5,
    )
    try:
        first = service.post("/v1/uploads", json=calibration, headers=tenant)
        second = service.post("/v1/uploads", json=calibration, headers=tenant)
        assert first.status_code == second.status_code == 201
        third = service.post("/v1/uploads", json=calibration, headers=tenant)
        assert third.status_code == 429, third.text
        error = third.json()["error"]
        assert error["code"] == "quota_exceeded" and error["field"] == "files"
        assert "BLOCKPRUNE_TENANT_MAX_PENDING_UPLOADS" in error["message"]
        assert third.headers["Retry-After"]
        # Another tenant is not held back by this one's uploads.
        assert service.post("/v1/uploads", json=calibration, headers=key_b).status_code == 201
        # A completed upload no longer counts.
        view = first.json()
        put = view["files"][0]
        httpx.put(put["url"], content=b"abc", headers=put["headers"]).raise_for_status()
        done = service.post(f"/v1/uploads/{view['id']}/complete", json={}, headers=tenant)
        assert done.status_code == 200, done.text
        # Parts: a 30 MiB file is 6 parts of 5 MiB, over the 4 a tenant may hold open.
        big = {"kind": "calibration", "files": [declare("big.txt", 30 << 20)]}
        parts = service.post("/v1/uploads", json=big, headers=tenant)
        assert parts.status_code == 413, parts.text
        assert "BLOCKPRUNE_TENANT_MAX_PENDING_PARTS" in parts.json()["error"]["message"]
        assert service.post("/v1/uploads", json=calibration, headers=tenant).status_code == 201
    finally:
        service.app.dependency_overrides.clear()


def test_abandoned_uploads_are_swept(service, tenant, s3_server):
    """An old pending upload's multipart upload is aborted, its objects and row deleted, and its
    quota given back; a multipart upload under uploads/ that no row knows is aborted too."""
    from sqlalchemy import text

    from service.db import transaction
    from service.tables import Upload
    from worker.sweep import sweep_uploads

    settings = settings_with(
        service, s3_multipart_threshold_mb=5, s3_multipart_chunk_mb=5, tenant_max_pending_uploads=1
    )
    try:
        files = [declare("a.txt", 12 << 20)]
        view = service.post(
            "/v1/uploads", json={"kind": "calibration", "files": files}, headers=tenant
        ).json()
        part = view["files"][0]["parts"][0]
        httpx.put(part["url"], content=b"x" * (5 << 20)).raise_for_status()
        full = service.post(
            "/v1/uploads", json={"kind": "calibration", "files": files}, headers=tenant
        )
        assert full.status_code == 429
        orphan = s3_server.create_multipart_upload(Bucket=BUCKET, Key="uploads/nobody/x/y.txt")
        with transaction() as session:
            row = session.get(Upload, view["id"])
            multipart = row.files[0]["multipart_id"]
            session.execute(
                text("UPDATE uploads SET created_at = now() - interval '2 days' WHERE id = :id"),
                {"id": view["id"]},
            )
        assert {multipart, orphan["UploadId"]} <= open_multipart(s3_server)
        # The S3 pass judges by S3's own clock: a second-long TTL makes the orphan old enough.
        swept = sweep_uploads(settings.model_copy(update={"presign_ttl_s": 1, "upload_ttl_s": 1}))
        assert swept.uploads >= 1 and swept.multipart >= 2
        assert not {multipart, orphan["UploadId"]} & open_multipart(s3_server)
        with transaction() as session:
            assert session.get(Upload, view["id"]) is None
        gone = service.get(f"/v1/uploads/{view['id']}", headers=tenant)
        assert gone.status_code == 404
        again = service.post(
            "/v1/uploads", json={"kind": "calibration", "files": files}, headers=tenant
        )
        assert again.status_code == 201, again.text
    finally:
        service.app.dependency_overrides.clear()


def test_no_url_writes_after_complete(service, tenant, s3_server):
    """A whole-file URL is signed with If-None-Match: * (S3 refuses a second PUT), and a part's
    URL names a multipart upload that completing ended."""
    text = b"calibration text " * 4
    view = upload(service, tenant, "calibration", {"t.txt": text})
    created = service.post(
        "/v1/uploads",
        json={"kind": "calibration", "files": [announce("u.txt", text)]},
        headers=tenant,
    ).json()
    put = created["files"][0]
    assert put["headers"] == {"If-None-Match": "*"} and "if-none-match" in put["url"].lower()
    httpx.put(put["url"], content=text, headers=put["headers"]).raise_for_status()
    service.post(
        f"/v1/uploads/{created['id']}/complete", json={}, headers=tenant
    ).raise_for_status()
    second = httpx.put(put["url"], content=b"x" * len(text), headers=put["headers"])
    assert second.status_code == 412, second.text
    key = f"uploads/{_tenant_id(tenant)}/{created['id']}/u.txt"
    assert s3_server.get_object(Bucket=BUCKET, Key=key)["Body"].read() == text
    assert view["status"] == "complete"

    settings_with(service, s3_multipart_threshold_mb=5, s3_multipart_chunk_mb=5)
    try:
        big = b"y" * (6 << 20)
        created = service.post(
            "/v1/uploads",
            json={"kind": "calibration", "files": [announce("b.txt", big)]},
            headers=tenant,
        ).json()
        parts, etags = created["files"][0]["parts"], []
        for p in parts:
            chunk = big[(p["part_number"] - 1) * (5 << 20) : p["part_number"] * (5 << 20)]
            answer = httpx.put(p["url"], content=chunk)
            etags.append({"part_number": p["part_number"], "etag": answer.headers["ETag"]})
        done = service.post(
            f"/v1/uploads/{created['id']}/complete",
            json={"parts": {"b.txt": etags}},
            headers=tenant,
        )
        assert done.status_code == 200, done.text
        late = httpx.put(parts[0]["url"], content=b"z" * (5 << 20))
        assert late.is_error  # S3: 404 NoSuchUpload (moto answers 500)
        key = f"uploads/{_tenant_id(tenant)}/{created['id']}/b.txt"
        assert s3_server.get_object(Bucket=BUCKET, Key=key)["Body"].read() == big
    finally:
        service.app.dependency_overrides.clear()


def _tenant_id(headers: dict) -> str:
    from service.db import transaction
    from service.keys import tenant_for_key

    with transaction() as session:
        tenant = tenant_for_key(session, headers["Authorization"].removeprefix("Bearer "))
    assert tenant is not None
    return tenant


def test_the_worker_refuses_a_file_changed_after_complete(s3_server, tmp_path):
    """Whatever reached S3 after /complete (a store without conditional writes, a leaked
    credential), the worker checks each file against the upload's row before it reads it."""
    from contract import ErrorCode, UserError
    from worker.downloads import fetch_calibration, fetch_model

    text, key = b"words " * 100, f"uploads/t/{uuid.uuid4()}/c.txt"
    s3_server.put_object(Bucket=BUCKET, Key=key, Body=text)
    etag = s3_server.head_object(Bucket=BUCKET, Key=key)["ETag"]
    entry = {"name": "c.txt", "size": len(text), "sha256": hashlib.sha256(text).hexdigest()}
    uri = f"s3://{BUCKET}/{key}"
    ok = fetch_calibration(
        s3_server, uri, tmp_path, "upload:x", pinned={"c.txt": {**entry, "etag": etag}}
    )
    assert ok.read_bytes() == text
    cases = {
        "changed after the upload was completed": {**entry, "etag": '"other"'},  # a new PUT
        "is not the file announced": {**entry, "sha256": "1" * 64},  # same size, other bytes
    }
    for message, pinned in cases.items():
        with pytest.raises(UserError, match=message) as caught:
            fetch_calibration(
                s3_server, uri, tmp_path / message[:5], "upload:x", pinned={"c.txt": pinned}
            )
        assert caught.value.code == ErrorCode.INVALID_INPUT and caught.value.field == "calibration"
    prefix = f"uploads/t/{uuid.uuid4()}/"
    for name, body in {"config.json": b"{}", "model.safetensors": b"12345678"}.items():
        s3_server.put_object(Bucket=BUCKET, Key=prefix + name, Body=body)
    pins = {
        n: {"name": n, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()}
        for n, b in {"config.json": b"{}", "model.safetensors": b"12345678"}.items()
    }
    s3_server.put_object(Bucket=BUCKET, Key=prefix + "model.safetensors", Body=b"123456789")
    with pytest.raises(UserError, match="model.safetensors changed after") as caught:
        fetch_model(s3_server, f"s3://{BUCKET}/{prefix}", tmp_path / "m", "upload:y", pinned=pins)
    assert caught.value.field == "model"


def test_a_job_on_an_upload_changed_after_complete_fails_on_its_first_attempt(
    service, key_a, workers, tiny_llama, s3_server
):
    workers.ensure()
    text = ("some calibration words. " * 200).encode()
    view = upload(service, key_a, "calibration", {"c.txt": text})
    key = f"uploads/{_tenant_id(key_a)}/{view['id']}/c.txt"
    s3_server.put_object(Bucket=BUCKET, Key=key, Body=text[::-1] + b"!")  # past the URLs' reach
    job = service.post(
        "/v1/jobs", json=job_body(tiny_llama, calibration=view["ref"]), headers=key_a
    ).json()
    done = wait_for(service, key_a, job["id"])
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "invalid_input" and done["error"]["field"] == "calibration"
    assert "c.txt changed after the upload was completed" in done["error"]["message"]
    assert done["attempts"] == 1


def test_a_file_s3_could_not_complete_is_refused_at_once(service, tenant):
    """More parts than S3 takes in one multipart upload (10,000) would be refused only at
    /complete, after every byte went up."""
    settings_with(service, s3_multipart_threshold_mb=5, s3_multipart_chunk_mb=5)
    try:
        files = [declare("big.txt", 10_001 * 5 * 2**20)]
        answer = service.post(
            "/v1/uploads", json={"kind": "calibration", "files": files}, headers=tenant
        )
    finally:
        service.app.dependency_overrides.clear()
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert (
        error["field"] == "files.0.size" and "BLOCKPRUNE_S3_MULTIPART_CHUNK_MB" in error["message"]
    )
