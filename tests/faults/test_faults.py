"""Faults injected into a running service: Redis, PostgreSQL and S3 taken away and given back,
the worker and the API killed with -9. Each case runs a real job on a tiny model and ends either
succeeded with the result of an undisturbed run, or failed with a clear code: never stuck,
never a duplicate job, never a half-written artifact set. Outages within their budget cost no
attempt."""

from __future__ import annotations

import random
import socket
import time

import httpx
import psycopg
import pytest
from svc.helpers import events, wait_for, wait_until

from .conftest import BUCKET

pytestmark = pytest.mark.slow
ITERATION_DELAY_S = 0.6  # per committed iteration: time to strike mid-job


def _recovers(
    stack, job_id: str, reference: list, what: str, since: float | None = None, attempts=1
) -> dict:
    """The job ends identical to the undisturbed run (`_succeeded_identical`); prints how long
    it took from the fault's end (`since`, default now) to done (shown with `pytest -s`; the
    failure-modes table in docs/service.md quotes these)."""
    since = time.monotonic() if since is None else since
    job = _final(stack, job_id)
    print(f"\nrecovery {what}: {time.monotonic() - since:.1f} s from the fault's end to done")
    _succeeded_identical(stack, job, reference, attempts)
    return job


def _client(stack) -> httpx.Client:
    return httpx.Client(base_url=stack.url, timeout=30)


def _picks(job: dict) -> list[tuple[str, int, float]]:
    return [(r["block"], r["layer"], r["ppl"]) for r in job["removed"]]


def _rows(stack, sql: str, *args) -> list[tuple]:
    with psycopg.connect(stack.pg.url.replace("+psycopg", ""), autocommit=True) as conn:
        return conn.execute(sql, args).fetchall()


def _submit(stack, body: dict, **headers: str) -> str:
    with _client(stack) as c:
        response = c.post("/v1/jobs", json=body, headers={**stack.headers, **headers})
    assert response.status_code in (200, 201), response.text
    return response.json()["id"]


def _final(stack, job_id: str, timeout: float = 90) -> dict:
    with _client(stack) as c:
        return wait_for(c, stack.headers, job_id, timeout=timeout)


def _when(stack, job_id: str, ready, timeout: float = 60) -> dict:
    with _client(stack) as c:

        def check():
            job = c.get(f"/v1/jobs/{job_id}", headers=stack.headers).json()
            return job if ready(job) else None

        return wait_until(check, timeout=timeout, what=f"job {job_id} to reach a state")


def _retries(stack, job_id: str, waiting_for: str) -> list[dict]:
    with _client(stack) as c:
        found = events(c, stack.headers, job_id, "retry")
    return [e["data"] for e in found if e["data"].get("waiting_for") == waiting_for]


def _artifacts_complete(stack, job_id: str) -> bool:
    """The manifest is there and lists exactly the objects under the job's prefix, each of
    its size: a reader never finds a half-written set."""
    import json

    listed = stack.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"jobs/{job_id}/").get("Contents", [])
    sizes = {o["Key"].rsplit("/", 1)[1]: o["Size"] for o in listed}
    if "manifest.json" not in sizes:
        return False
    body = stack.s3.get_object(Bucket=BUCKET, Key=f"jobs/{job_id}/manifest.json")["Body"].read()
    manifest = json.loads(body)
    return {f["name"]: f["size"] for f in manifest["files"]} == {
        k: v for k, v in sizes.items() if k != "manifest.json"
    }


@pytest.fixture(scope="module")
def reference(stack, tiny) -> list:
    """The picks of an undisturbed run: every case must end with exactly these."""
    stack.start_worker()
    job = _final(stack, _submit(stack, stack.inputs("reference", *tiny)))
    assert job["status"] == "succeeded", job
    assert _artifacts_complete(stack, job["id"])
    return _picks(job)


def _succeeded_identical(stack, job: dict, reference: list, attempts: int | None = 1) -> None:
    assert job["status"] == "succeeded", job
    assert _picks(job) == reference
    assert _artifacts_complete(stack, job["id"])
    if attempts is not None:  # an outage waited out costs no attempt
        assert job["attempts"] == attempts, job


def test_redis_restarted_mid_job(stack, tiny, reference):
    stack.start_worker(ITERATION_DELAY_S)
    job_id = _submit(stack, stack.inputs("redis-mid-job", *tiny))
    _when(stack, job_id, lambda j: j["progress"]["iteration"] >= 1)
    stack.redis.restart(down_s=2.0)  # comes back empty: queued messages, markers, all gone
    _recovers(stack, job_id, reference, "redis restarted mid-job")


def test_redis_restarted_mid_fanout(stack, tiny, reference):
    """A fanned-out job through a Redis restart: the shares made while Redis is down wait in
    the outbox with "retry" events naming the broker, on the job; those lost with Redis are
    re-sent by the reaper; the job ends with the undisturbed picks."""
    stack.start_worker(BLOCKPRUNE_TEST_SCORE_DELAY_S="0.15")
    body = {**stack.inputs("redis-fanout", *tiny), "parallelism": 2}
    job_id = _submit(stack, body)
    _when(stack, job_id, lambda j: j["phase"] == "searching")
    stack.redis.stop()
    try:
        wait_until(lambda: _retries(stack, job_id, "broker"), timeout=30, what="broker retries")
    finally:
        stack.redis.start()
    _recovers(stack, job_id, reference, "redis restarted mid-fan-out (parallelism 2)")


def test_redis_down_at_submit(stack, tiny, reference):
    """POST answers at once with Redis down; the job's message waits in the outbox (retry
    events name the broker) and goes out once Redis is back."""
    stack.start_worker()
    stack.redis.stop()
    try:
        started = time.monotonic()
        job_id = _submit(stack, stack.inputs("redis-down-submit", *tiny))
        assert time.monotonic() - started < 2.0
        wait_until(lambda: _retries(stack, job_id, "broker"), timeout=30, what="broker retries")
        assert _rows(stack, "SELECT count(*) FROM outbox WHERE ref = %s", job_id)[0][0] == 1
        assert _final_status_now(stack, job_id) == "queued"
    finally:
        stack.redis.start()
    _recovers(stack, job_id, reference, "redis down at submit")
    assert _rows(stack, "SELECT count(*) FROM outbox WHERE ref = %s", job_id)[0][0] == 0


def test_redis_restarted_with_the_message_queued(stack, tiny, reference):
    """The job's message was sent and waits in Redis when Redis restarts empty: the reaper
    finds the job queued too long with no message waiting, and sends it again."""
    stack.stop_worker()
    job_id = _submit(stack, stack.inputs("redis-lost-message", *tiny))
    wait_until(
        lambda: not _rows(stack, "SELECT 1 FROM outbox WHERE ref = %s", job_id),
        timeout=30,
        what="the message sent",
    )
    stack.redis.restart(down_s=0.5)  # the queued message is gone
    back = time.monotonic()
    stack.start_worker()
    _recovers(stack, job_id, reference, "redis restarted with the message queued", since=back)
    with _client(stack) as c:
        assert [e["data"]["reason"] for e in events(c, stack.headers, job_id, "requeued")] == [
            "queued_too_long"
        ]


def test_postgres_restarted_mid_job(stack, tiny, reference):
    # The reaper looks more often than the heartbeat renews: once PostgreSQL is back, it sees
    # the expired lease before the worker can renew it (the race a long outage sets up).
    stack.start_worker(
        ITERATION_DELAY_S, BLOCKPRUNE_HEARTBEAT_S="1.5", BLOCKPRUNE_REAPER_INTERVAL_S="0.2"
    )
    job_id = _submit(stack, stack.inputs("pg-mid-job", *tiny))
    _when(stack, job_id, lambda j: j["progress"]["iteration"] >= 1)
    stack.pg.restart(down_s=3.0)  # longer than the 2 s lease: the reaper must not take it
    _recovers(stack, job_id, reference, "postgres restarted mid-job")


def test_s3_down_during_download(stack, tiny, reference):
    stack.start_worker()
    stack.gate.shut()
    try:
        job_id = _submit(stack, stack.inputs("s3-down-download", *tiny))
        wait_until(lambda: _retries(stack, job_id, "s3"), timeout=60, what="s3 retry events")
        assert _final_status_now(stack, job_id) == "running"
    finally:
        stack.gate.open()
    _recovers(stack, job_id, reference, "s3 down during download")


def test_s3_down_during_upload(stack, tiny, reference):
    """S3 goes while the export uploads: nothing is declared done until every file is in and
    verified, and the manifest (written last) appears only then."""
    stack.start_worker(ITERATION_DELAY_S)
    job_id = _submit(stack, stack.inputs("s3-down-upload", *tiny))
    _when(stack, job_id, lambda j: j["progress"]["iteration"] >= 3)  # the export comes next
    stack.gate.shut()
    try:
        wait_until(lambda: _retries(stack, job_id, "s3"), timeout=60, what="s3 retry events")
        assert _final_status_now(stack, job_id) == "running"
        assert not _artifacts_complete(stack, job_id)
    finally:
        stack.gate.open()
    _recovers(stack, job_id, reference, "s3 down during upload")


def test_s3_hung_during_upload_is_found_in_seconds_and_a_cancel_wins(stack, tiny, reference):
    """S3 accepts connections and never answers while the export uploads: the worker's
    timeouts (2 s here) find it in seconds and wait it out as an outage, with retry events
    naming s3; a cancel sent meanwhile ends the job cancelled between two tries, and the sweep
    empties its prefix once S3 answers again."""
    stack.start_worker(
        ITERATION_DELAY_S,
        BLOCKPRUNE_S3_READ_TIMEOUT_S="2",
        BLOCKPRUNE_S3_CONNECT_TIMEOUT_S="2",
        BLOCKPRUNE_UPLOAD_SWEEP_INTERVAL_S="1",
    )
    job_id = _submit(stack, stack.inputs("s3-hung", *tiny))
    _when(stack, job_id, lambda j: j["progress"]["iteration"] >= 3)  # the export comes next
    stack.gate.hang()
    hung = time.monotonic()
    try:
        wait_until(lambda: _retries(stack, job_id, "s3"), timeout=60, what="s3 retry events")
        detected = time.monotonic() - hung
        assert _final_status_now(stack, job_id) == "running"
        with _client(stack) as c:
            asked = time.monotonic()
            assert c.post(f"/v1/jobs/{job_id}/cancel", headers=stack.headers).status_code == 200
        _when(stack, job_id, lambda j: j["status"] == "cancelled", timeout=60)
        cancelled = time.monotonic() - asked
    finally:
        stack.gate.unhang()
    back = time.monotonic()
    listed = lambda: stack.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"jobs/{job_id}/")  # noqa: E731
    wait_until(lambda: listed().get("KeyCount") == 0, timeout=30, what="the prefix swept")
    print(
        f"\ns3 hung during upload: retry event {detected:.1f} s after the hang, cancelled "
        f"{cancelled:.1f} s after the cancel, prefix empty {time.monotonic() - back:.1f} s "
        "after S3 answered again"
    )


def test_an_outage_past_its_budget_fails_the_job_with_a_clear_code(stack, tiny, reference):
    stack.start_worker(BLOCKPRUNE_S3_OUTAGE_BUDGET_S="2")
    stack.gate.shut()
    try:
        job = _final(stack, _submit(stack, stack.inputs("s3-budget", *tiny)))
    finally:
        stack.gate.open()
    assert job["status"] == "failed" and job["attempts"] == 1
    assert job["error"]["code"] == "dependency_unavailable"
    assert "s3" in job["error"]["message"] and "S3_OUTAGE_BUDGET_S" in job["error"]["message"]
    assert not _artifacts_complete(stack, job["id"])


def test_worker_killed_repeatedly(stack, tiny, reference):
    rng = random.Random(7)
    stack.start_worker(ITERATION_DELAY_S)
    job_id = _submit(stack, stack.inputs("worker-kill", *tiny))
    _when(stack, job_id, lambda j: j["status"] == "running")
    for _ in range(2):
        time.sleep(rng.uniform(0.2, 1.5))
        assert stack.worker is not None
        stack.worker.kill9()
        stack.start_worker(ITERATION_DELAY_S)  # about 10 s: torch and transformers load
    what = "worker killed twice (from the second worker's start)"
    job = _recovers(stack, job_id, reference, what, attempts=None)
    assert job["attempts"] <= job["max_attempts"]


def test_api_killed_during_post(stack, tiny, reference):
    """kill -9 of the API around a POST, at several moments; the client retries with its
    Idempotency-Key. One job per key, always with its message: it runs to the same result."""
    stack.start_worker()
    body = stack.inputs("api-kill", *tiny)
    job_ids = []
    for k, after_s in enumerate((0.0, 0.005, 0.02, 0.05)):
        key = f"faults-api-kill-{k}"
        _post_and_kill(stack, body, key, after_s)
        stack.start_api()
        job_ids.append(_submit(stack, body, **{"Idempotency-Key": key}))
        rows = _rows(stack, "SELECT id FROM jobs WHERE idempotency_key = %s", key)
        assert [r[0] for r in rows] == [job_ids[-1]]  # never a duplicate
    for job_id in job_ids:
        _succeeded_identical(stack, _final(stack, job_id), reference)


def _post_and_kill(stack, body: dict, key: str, after_s: float) -> None:
    """Send the POST on a raw socket, then kill -9 the API `after_s` later, answer or not."""
    import json

    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: {stack.headers['Authorization']}\r\nIdempotency-Key: {key}\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", stack.api_port)) as conn:
        conn.sendall(head + payload)
        time.sleep(after_s)
        stack.kill_api()


def _final_status_now(stack, job_id: str) -> str:
    return _rows(stack, "SELECT status FROM jobs WHERE id = %s", job_id)[0][0]
