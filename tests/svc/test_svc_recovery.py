"""A worker that meets a transient S3 error, or its soft time limit, re-queues the job and
the next attempt resumes from the checkpoint with the engine's own result."""

from __future__ import annotations

from .fixtures import S3_PORT
from .helpers import FlakyProxy, events, job_body, wait_for
from .test_svc_jobs import engine_result


def test_worker_recovers_from_a_transient_s3_error(service, workers, key_a, tiny_llama, tmp_path):
    proxy = FlakyProxy(S3_PORT)
    # One boto3 try per request, so the dropped connection fails the attempt itself.
    env = {"BLOCKPRUNE_S3_ENDPOINT_URL": proxy.url, "BLOCKPRUNE_S3_MAX_ATTEMPTS": "1"}
    log_path = workers.start(env=env).log_path
    try:
        proxy.fail_next = 1  # S3 is unreachable for the job's first request, then back
        body = job_body(tiny_llama, seed=11)
        job_id = service.post("/v1/jobs", json=body, headers=key_a).json()["id"]
        job = wait_for(service, key_a, job_id, timeout=90)
    finally:
        workers.stop()
        proxy.close()
    assert proxy.dropped == 1
    # A passing outage is waited out within the attempt, not counted as a crash.
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1 and job["error"] is None
    retries = events(service, key_a, job_id, "retry")
    assert [(r["data"]["reason"], r["data"]["waiting_for"]) for r in retries] == [
        ("s3_unavailable", "s3")
    ]
    # The tenant reads what is waited for and the error's type; the message, naming the
    # internal S3 endpoint, is in the worker's log only.
    assert retries[0]["data"]["error"] in ("ConnectionClosedError", "EndpointConnectionError")
    assert "127.0.0.1" not in str(retries[0]["data"])
    worker_log = log_path.read_text()
    assert "s3 unavailable (try 1" in worker_log and "127.0.0.1" in worker_log
    expected = engine_result(tiny_llama, tmp_path, seed=11)
    assert job["removed"] == expected["removed"] and job["base_ppl"] == expected["base_ppl"]


def test_soft_time_limit_requeues_from_the_checkpoint(
    service, workers, key_a, tiny_llama, tmp_path
):
    from service.settings import get_settings

    # Each attempt may run 3 s and each iteration takes over 1 s, so the search needs two or
    # more attempts; a loaded machine may need more than the default three.
    env = {"BLOCKPRUNE_TASK_SOFT_TIME_LIMIT_S": "3", "BLOCKPRUNE_TASK_TIME_LIMIT_S": "60"}
    more_attempts = get_settings().model_copy(update={"max_attempts": 8})
    service.app.dependency_overrides[get_settings] = lambda: more_attempts
    workers.start(delay_s=1.0, env=env)
    try:
        body = job_body(tiny_llama, seed=12, num_blocks=3)
        job_id = service.post("/v1/jobs", json=body, headers=key_a).json()["id"]
        job = wait_for(service, key_a, job_id, timeout=120)
    finally:
        service.app.dependency_overrides.clear()
        workers.stop()
    assert job["status"] == "succeeded", job
    retries = events(service, key_a, job_id, "retry")
    assert job["attempts"] >= 2 and len(retries) == job["attempts"] - 1
    assert {r["data"]["reason"] for r in retries} == {"time_limit"}
    # Resumed, not restarted: every iteration was committed exactly once, in order.
    iterations = [e["data"]["iteration"] for e in events(service, key_a, job_id, "iteration")]
    assert iterations == [1, 2, 3]
    expected = engine_result(tiny_llama, tmp_path, seed=12, num_blocks=3)
    assert job["removed"] == expected["removed"] and job["base_ppl"] == expected["base_ppl"]
