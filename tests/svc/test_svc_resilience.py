"""A worker killed with SIGKILL mid-search, and cancellation while queued and while running."""

from __future__ import annotations

import time

from .helpers import events, job_body, wait_for, wait_until
from .test_svc_jobs import engine_result


def test_cancel_queued_and_running(service, workers, key_a, tiny_llama):
    workers.ensure(delay_s=30.0)  # slow iterations: the first job holds the only worker
    running_id = service.post("/v1/jobs", json=job_body(tiny_llama), headers=key_a).json()["id"]
    wait_until(
        lambda: events(service, key_a, running_id, "iteration"), timeout=60, what="iteration 1"
    )
    queued = service.post("/v1/jobs", json=job_body(tiny_llama, seed=7), headers=key_a).json()
    assert queued["status"] == "queued"

    cancelled = service.post(f"/v1/jobs/{queued['id']}/cancel", headers=key_a)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = service.post(f"/v1/jobs/{queued['id']}/cancel", headers=key_a)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"

    cancelling = service.post(f"/v1/jobs/{running_id}/cancel", headers=key_a).json()
    assert cancelling["status"] == "cancelling"
    job = wait_for(service, key_a, running_id, timeout=30)
    assert job["status"] == "cancelled"
    assert 1 <= len(job["removed"]) < 3  # stopped at a checkpoint, before the search ended
    assert service.post(f"/v1/jobs/{running_id}/cancel", headers=key_a).json()["status"] == (
        "cancelled"
    )
    artifacts = service.get(f"/v1/jobs/{running_id}/artifacts", headers=key_a)
    assert artifacts.status_code == 409

    # The queued job's message is still consumed later; the worker must leave it cancelled.
    time.sleep(1.0)
    job = service.get(f"/v1/jobs/{queued['id']}", headers=key_a).json()
    assert job["status"] == "cancelled" and job["attempts"] == 0
    statuses = [e["data"]["to"] for e in events(service, key_a, running_id, "status")]
    assert statuses == ["running", "cancelling", "cancelled"]


def test_kill9_mid_search_resumes_from_checkpoint(service, workers, key_a, tiny_llama, tmp_path):
    body = job_body(tiny_llama, num_blocks=4, seed=1)
    # Slow iterations (a testing aid) so the kill lands mid-search.
    first = workers.ensure(delay_s=30.0)  # the same worker as the cancel test's
    job_id = service.post("/v1/jobs", json=body, headers=key_a).json()["id"]
    wait_until(lambda: events(service, key_a, job_id, "iteration"), timeout=60, what="iteration 1")
    first.kill9()
    job = service.get(f"/v1/jobs/{job_id}", headers=key_a).json()
    assert job["status"] == "running" and job["progress"]["iteration"] == 1

    killed_at = time.monotonic()
    workers.start()  # a new worker; its reaper re-queues the job once the 2 s lease expires
    job = wait_for(service, key_a, job_id, timeout=90)
    assert job["status"] == "succeeded", job
    assert time.monotonic() - killed_at < 60
    assert job["attempts"] == 2

    expected = engine_result(tiny_llama, tmp_path, num_blocks=4, seed=1)
    assert job["removed"] == expected["removed"] and job["base_ppl"] == expected["base_ppl"]
    # No completed iteration was computed twice: iteration 1 came from the first worker only.
    iterations = [e["data"]["iteration"] for e in events(service, key_a, job_id, "iteration")]
    assert iterations == [1, 2, 3, 4]
    retries = events(service, key_a, job_id, "retry")
    assert [r["data"]["reason"] for r in retries] == ["lease_expired"]
