"""S3 against moto's server: multipart upload with verification and manifest, safe model
downloads, the download cache; and the webhook signature."""

from __future__ import annotations

import json
import time

import pytest
from botocore.exceptions import ClientError

from .fixtures import BUCKET


class Recording:
    """An S3 client wrapper that records downloads and can lie about object sizes."""

    def __init__(self, client, wrong_size: bool = False) -> None:
        self.client, self.wrong_size, self.downloads = client, wrong_size, []

    def download_file(self, bucket, key, filename):
        self.downloads.append(key)
        return self.client.download_file(bucket, key, filename)

    def head_object(self, **kw):
        head = self.client.head_object(**kw)
        return {**head, "ContentLength": head["ContentLength"] + 1} if self.wrong_size else head

    def __getattr__(self, name):
        return getattr(self.client, name)


def test_upload_is_multipart_verified_and_manifest_last(s3_server, tmp_path):
    from contract.sources import sha256_file
    from service.settings import get_settings
    from worker.uploads import upload_export, write_manifest

    settings = get_settings().model_copy(
        update={"s3_multipart_threshold_mb": 5, "s3_multipart_chunk_mb": 5}
    )
    (tmp_path / "model.safetensors").write_bytes(b"\x01" * (6 * 2**20))  # two parts
    (tmp_path / "pruning.json").write_text('{"removed": []}')
    files = upload_export(s3_server, settings, tmp_path, "job-upload")
    assert [f["name"] for f in files] == ["model.safetensors", "pruning.json"]
    head = s3_server.head_object(Bucket=BUCKET, Key="jobs/job-upload/model.safetensors")
    assert head["ETag"].strip('"').endswith("-2")  # really a multipart upload
    assert files[0]["sha256"] == sha256_file(tmp_path / "model.safetensors")
    with pytest.raises(ClientError):  # the manifest is the success's to write
        s3_server.head_object(Bucket=BUCKET, Key="jobs/job-upload/manifest.json")
    write_manifest(s3_server, settings, "job-upload", files)
    manifest = s3_server.get_object(Bucket=BUCKET, Key="jobs/job-upload/manifest.json")
    assert json.loads(manifest["Body"].read())["files"] == files


def test_upload_that_does_not_verify_writes_no_manifest(s3_server, tmp_path):
    from service.settings import get_settings
    from worker.uploads import UploadVerificationError, upload_export

    (tmp_path / "pruning.json").write_text("{}")
    with pytest.raises(UploadVerificationError):
        upload_export(Recording(s3_server, wrong_size=True), get_settings(), tmp_path, "job-bad")
    with pytest.raises(ClientError):
        s3_server.head_object(Bucket=BUCKET, Key="jobs/job-bad/manifest.json")


def test_a_stopped_upload_stops_within_a_file_and_the_sweep_empties_the_prefix(
    s3_server, tmp_path, new_job, sent
):
    """A cancel during the upload stops it inside a multipart file (boto3's progress callback);
    what was put, objects and open multipart uploads, is swept once the job has ended
    cancelled, by the worker at once (`sweep_job`) or by the periodic sweep."""
    from sqlalchemy import text

    from service.db import transaction
    from service.settings import get_settings
    from service.tables import Job
    from service.transitions import request_cancel
    from worker.sweep import sweep_ended_jobs, sweep_job
    from worker.uploads import UploadStopped, upload_export

    settings = get_settings().model_copy(
        update={"s3_multipart_threshold_mb": 5, "s3_multipart_chunk_mb": 5}
    )
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"\x01" * (11 * 2**20))  # three parts
    calls = []

    def cancelled_mid_file() -> bool:
        calls.append(1)
        return len(calls) > 3  # a.json and the first part of the model are in

    job_id, other = new_job(), new_job()
    with pytest.raises(UploadStopped):
        upload_export(s3_server, settings, tmp_path, job_id, cancelled_mid_file)
    prefix = f"jobs/{job_id}/"
    listed = s3_server.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    assert [o["Key"] for o in listed] == [prefix + "a.json"]
    # boto3 aborts the multipart upload it stopped; one is left open only by a worker killed
    # mid-file, as this one is.
    assert not s3_server.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads")
    s3_server.create_multipart_upload(Bucket=BUCKET, Key=prefix + "model.safetensors")

    sweep_job(settings, job_id)  # still queued: not the sweep's
    assert s3_server.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("KeyCount") == 1
    with transaction() as s:
        for ref in (job_id, other):
            request_cancel(s, s.get(Job, ref, with_for_update=True))
    sweep_job(settings, job_id)
    assert s3_server.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("KeyCount") == 0
    assert not s3_server.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads")

    # The periodic sweep: jobs ended more than two leases ago, each once.
    s3_server.put_object(Bucket=BUCKET, Key=f"jobs/{other}/left.bin", Body=b"x")
    with transaction() as s:
        s.execute(
            text("UPDATE jobs SET finished_at = now() - interval '1 hour' WHERE id = :id"),
            {"id": other},
        )
    assert sweep_ended_jobs(settings) >= 1
    assert s3_server.list_objects_v2(Bucket=BUCKET, Prefix=f"jobs/{other}/").get("KeyCount") == 0
    with transaction() as s:
        assert s.get(Job, other).export_swept_at is not None
        assert s.get(Job, job_id).export_swept_at is not None


def test_pickle_only_model_is_refused_before_any_download(s3_server, tmp_path):
    from contract import UserError
    from worker.downloads import fetch_model

    for name in ("config.json", "pytorch_model.bin"):
        s3_server.put_object(Bucket=BUCKET, Key=f"models/pickled/{name}", Body=b"{}")
    s3 = Recording(s3_server)
    with pytest.raises(UserError) as error:
        fetch_model(s3, f"s3://{BUCKET}/models/pickled/", tmp_path)
    assert error.value.code == "unsafe_weights" and "pytorch_model.bin" in str(error.value)
    assert s3.downloads == []


def test_model_download_skips_pickles_and_is_cached(s3_server, tmp_path):
    from worker.downloads import fetch_model

    for name in ("config.json", "model.safetensors", "tokenizer.json", "extra.bin", "sub/x.json"):
        s3_server.put_object(Bucket=BUCKET, Key=f"models/mixed/{name}", Body=b"{}")
    s3 = Recording(s3_server)
    local = fetch_model(s3, f"s3://{BUCKET}/models/mixed", tmp_path)
    assert sorted(p.name for p in local.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert fetch_model(s3, f"s3://{BUCKET}/models/mixed/", tmp_path) == local
    assert len(s3.downloads) == 3  # the second call was served from the cache


def test_missing_calibration_object_is_a_user_error(s3_server, tmp_path):
    from contract import UserError
    from worker.downloads import fetch_calibration

    with pytest.raises(UserError) as error:
        fetch_calibration(s3_server, f"s3://{BUCKET}/calibration/none.txt", tmp_path)
    assert error.value.code == "s3_object_not_found" and error.value.field == "calibration"
    with pytest.raises(UserError) as error:
        fetch_calibration(s3_server, "s3://no-such-bucket-here/x.txt", tmp_path)
    assert error.value.code == "s3_object_not_found"


def test_webhook_signature():
    from worker.webhooks import check_target, sign, verify

    body = b'{"type":"job.succeeded"}'
    header = sign("secret", int(time.time()), body)
    assert verify("secret", header, body)
    assert not verify("secret", header, body + b" ")
    assert not verify("other", header, body)
    assert not verify("secret", sign("secret", int(time.time()) - 3600, body), body)  # replay
    with pytest.raises(ValueError, match="not a reachable public address"):
        check_target("http://127.0.0.1:8080/hook", allow_private=False)
    check_target("http://127.0.0.1:8080/hook", allow_private=True)
