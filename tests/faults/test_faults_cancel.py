"""Cancel, as the fault drill of issue 23 found it wanting: a cancel ends the job `cancelled`
within seconds in every phase and at every parallelism, and a cancelled job leaves nothing under
its S3 prefix. A job that succeeded was never cancelled before its manifest; a cancel after it
is refused with 409."""

from __future__ import annotations

import time

import pytest
from svc.helpers import wait_until

from .conftest import BUCKET
from .test_faults import ITERATION_DELAY_S, _client, _final, _submit, _when

pytestmark = pytest.mark.slow
UPLOAD_DELAY_S = 0.5  # per file of the export (tests/svc/slow_worker.py): time to cancel mid-upload


def _keys(stack, job_id: str) -> list[str]:
    listed = stack.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"jobs/{job_id}/")
    return [o["Key"] for o in listed.get("Contents", [])]


def _cancel_and_time(stack, job_id: str) -> tuple[float, float]:
    """Cancel now; seconds until the job is cancelled, and until its prefix is empty."""
    with _client(stack) as c:
        sent = time.monotonic()
        answer = c.post(f"/v1/jobs/{job_id}/cancel", headers=stack.headers)
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] in ("cancelling", "cancelled")

        def cancelled():
            return c.get(f"/v1/jobs/{job_id}", headers=stack.headers).json()["status"] == (
                "cancelled"
            )

        wait_until(cancelled, timeout=30, what=f"job {job_id} cancelled")
        to_cancelled = time.monotonic() - sent
        wait_until(lambda: not _keys(stack, job_id), timeout=30, what="an empty prefix")
        return to_cancelled, time.monotonic() - sent


def test_a_cancel_ends_the_job_within_seconds_in_every_phase_and_leaves_nothing(stack, tiny):
    stack.start_worker(
        ITERATION_DELAY_S,
        BLOCKPRUNE_TEST_SCORE_DELAY_S="0.15",
        BLOCKPRUNE_TEST_UPLOAD_DELAY_S=str(UPLOAD_DELAY_S),
    )
    figures = []
    for parallelism in (1, 2):
        for phase in ("searching", "uploading"):
            body = stack.inputs(f"cancel-{phase}-{parallelism}", *tiny)
            job_id = _submit(stack, {**body, "parallelism": parallelism})
            _when(stack, job_id, lambda j, phase=phase: j["phase"] == phase)
            if phase == "uploading":  # some of the export is in S3 already
                wait_until(lambda j=job_id: _keys(stack, j), timeout=30, what="a file uploaded")
            to_cancelled, to_empty = _cancel_and_time(stack, job_id)
            figures.append((parallelism, phase, to_cancelled, to_empty))
            job = _final(stack, job_id)
            assert job["status"] == "cancelled", job
    for parallelism, phase, to_cancelled, to_empty in figures:
        print(
            f"\ncancel while {phase}, parallelism {parallelism}: cancelled in "
            f"{to_cancelled:.1f} s, prefix empty in {to_empty:.1f} s"
        )
    assert all(to_cancelled < 5 for _, _, to_cancelled, _ in figures), figures


def test_a_cancel_after_success_is_refused(stack, tiny):
    stack.start_worker()
    job = _final(stack, _submit(stack, stack.inputs("cancel-late", *tiny)))
    assert job["status"] == "succeeded"
    with _client(stack) as c:
        answer = c.post(f"/v1/jobs/{job['id']}/cancel", headers=stack.headers)
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "job_finished"
    assert any(key.endswith("/manifest.json") for key in _keys(stack, job["id"]))
