"""The operator's bounds: request body size (before auth), calibration tokens and file size,
and per-tenant quotas of queued and running jobs."""

from __future__ import annotations

import pytest

from contract import ErrorCode, JobSpec, UserError
from svc.fixtures import BUCKET
from svc.helpers import job_body
from svc.test_svc_fit import submit


def test_a_body_over_the_limit_is_refused_before_authentication(service):
    big = b'{"model": "' + b"x" * (2 << 20) + b'"}'
    declared = service.post("/v1/jobs", content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413  # no API key given: the size is checked first
    assert declared.json()["error"]["code"] == "payload_too_large"

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(64):
            yield b"x" * 65536

    streamed = service.post(
        "/v1/jobs", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413 and "BLOCKPRUNE_MAX_REQUEST_BYTES" in streamed.text
    small = service.post("/v1/jobs", json={"model": "x"})
    assert small.status_code == 401  # under the limit: on to authentication


def test_calibration_tokens_are_capped(service, key_a, tiny_llama):
    body = job_body(tiny_llama, samples=64, seq_len=64)
    refused = submit(service, key_a, {"max_calibration_tokens": 4000}, body)
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "samples"
    assert "4,096 calibration tokens, over this service's limit of 4,000" in refused.text


def test_a_calibration_file_over_the_limit_is_not_downloaded(s3_server, tmp_path):
    from worker.downloads import fetch_calibration

    s3_server.put_object(Bucket=BUCKET, Key="calibration/big.txt", Body=b"word " * 1000)
    uri = f"s3://{BUCKET}/calibration/big.txt"
    with pytest.raises(UserError, match="5,000 bytes, over this service's limit of 4,096"):
        fetch_calibration(s3_server, uri, tmp_path, max_bytes=4096)
    assert not any(tmp_path.rglob("*.txt"))  # nothing fetched
    assert (
        fetch_calibration(s3_server, uri, tmp_path, max_bytes=5000).read_bytes().startswith(b"word")
    )


def test_tenant_quota_counts_queued_and_running_jobs(service, database):
    from service import jobstore
    from service.db import transaction
    from service.keys import create_key

    spec = JobSpec(model="builtin:smollm2-135m", calibration="builtin:stdlib-docs", num_blocks=1)
    with transaction() as s:
        issued = create_key(s, "quota-tenant")
        ids = []
        for n in range(2):
            job, _ = jobstore.create_job(
                s,
                tenant_id=issued.tenant_id,
                spec=spec,
                user_metadata={},
                webhook_url=None,
                idempotency_key=f"k{n}",
                request_hash="h",
                max_attempts=1,
                max_active=2,
            )
            ids.append(job.id)
        with pytest.raises(jobstore.QuotaExceeded):
            jobstore.create_job(
                s,
                tenant_id=issued.tenant_id,
                spec=spec,
                user_metadata={},
                webhook_url=None,
                idempotency_key=None,
                request_hash="h",
                max_attempts=1,
                max_active=2,
            )
        replay, created = jobstore.create_job(  # a retry of a job already made: never refused
            s,
            tenant_id=issued.tenant_id,
            spec=spec,
            user_metadata={},
            webhook_url=None,
            idempotency_key="k0",
            request_hash="h",
            max_attempts=1,
            max_active=2,
        )
        assert (replay.id, created) == (ids[0], False)
    headers = {"Authorization": f"Bearer {issued.key}"}
    body = {"model": "builtin:smollm2-135m", "calibration": "builtin:stdlib-docs", "num_blocks": 1}
    full = submit(service, headers, {"tenant_max_active_jobs": 2}, body)
    assert full.status_code == 429 and full.headers["Retry-After"] == "30"
    assert full.json()["error"]["code"] == ErrorCode.QUOTA_EXCEEDED.value
    for job_id in ids:  # a cancelled job no longer counts
        assert service.post(f"/v1/jobs/{job_id}/cancel", headers=headers).status_code == 200
    room = submit(service, headers, {"tenant_max_active_jobs": 2}, body)
    assert room.status_code == 201, room.text
    service.post(f"/v1/jobs/{room.json()['id']}/cancel", headers=headers)


def test_no_more_requests_inside_the_app_than_the_pool_has_connections():
    """InFlightLimit: the others wait outside (on the event loop), holding nothing."""
    import asyncio

    from api.limits import InFlightLimit

    inside, most = 0, 0

    async def app(scope, receive, send):
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        await asyncio.sleep(0.01)
        inside -= 1

    limited = InFlightLimit(app, limit=3)

    async def burst():
        await asyncio.gather(*(limited({"type": "http"}, None, None) for _ in range(20)))
        await limited({"type": "lifespan"}, None, None)  # not an HTTP request: not counted

    asyncio.run(burst())
    assert most == 3 and inside == 0
