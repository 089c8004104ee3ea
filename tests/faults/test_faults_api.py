"""The API through a PostgreSQL outage, as the fault drill of issue 23 found it: it answered 500
internal_error, and `blockprune jobs wait` exited 2 while the job went on. Now it answers 503
dependency_unavailable with Retry-After, and the wait waits the outage out within its
--timeout, then exits 0 once the job succeeds."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
from svc.helpers import REPO, wait_until

from .test_faults import ITERATION_DELAY_S, _client, _final, _submit, _when

pytestmark = pytest.mark.slow
# How long PostgreSQL stays down: past the client's own retries of one request (4 after a
# Retry-After of 2 s), so that `jobs wait` itself must wait it out, and within its --timeout.
DOWN_S = 10.0


def _wait_command(stack, job_id: str) -> subprocess.Popen:
    """`blockprune jobs wait JOB_ID` in a process of its own, as a user runs it."""
    key = stack.headers["Authorization"].removeprefix("Bearer ")
    env = {**os.environ, "BLOCKPRUNE_API_URL": stack.url, "BLOCKPRUNE_API_KEY": key}
    return subprocess.Popen(
        [sys.executable, "-m", "blockprune", "jobs", "wait", job_id, "--timeout", "120"]
        + ["--poll", "0.2"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_database_outage_is_a_503_that_jobs_wait_waits_out(stack, tiny):
    stack.start_worker(ITERATION_DELAY_S)
    job_id = _submit(stack, stack.inputs("api-pg-down", *tiny))
    waiting = _wait_command(stack, job_id)
    try:
        _when(stack, job_id, lambda j: j["progress"]["iteration"] >= 1)
        assert waiting.poll() is None, waiting.communicate()
        stack.pg.stop()
        down = time.monotonic()
        answers: list[tuple[float, httpx.Response]] = []
        try:
            with _client(stack) as c:
                while time.monotonic() - down < DOWN_S:
                    answer = c.get(f"/v1/jobs/{job_id}", headers=stack.headers)
                    answers.append((time.monotonic(), answer))
                    time.sleep(0.2)
                # Liveness is the process's own; readiness names the database.
                assert c.get("/healthz").status_code == 200
                ready = c.get("/readyz")
                assert ready.status_code == 503 and ready.json()["checks"]["database"] == "failed"
        finally:
            stack.pg.start()
        up = time.monotonic()
        for _, answer in answers:
            assert answer.status_code == 503, answer.text
            assert int(answer.headers["Retry-After"]) >= 1
            error = answer.json()["error"]
            assert error["code"] == "dependency_unavailable", error
            assert "database" in error["message"] and "127.0.0.1" not in error["message"]
        assert waiting.poll() is None, waiting.communicate()  # still waiting, not given up

        with _client(stack) as c:
            wait_until(
                lambda: c.get(f"/v1/jobs/{job_id}", headers=stack.headers).status_code == 200,
                timeout=30,
                what="the API answering again",
            )
        first_ok = time.monotonic() - up
        out, err = waiting.communicate(timeout=120)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 0, err
    assert f"job {job_id} succeeded" in out
    assert _final(stack, job_id)["status"] == "succeeded"
    print(
        f"\npostgres down {DOWN_S:g} s: the API answered 503 for "
        f"{answers[-1][0] - answers[0][0]:.1f} s ({len(answers)} answers), its first 200 came "
        f"{first_ok:.1f} s after the database was back; jobs wait exited 0"
    )
