"""Fairness of the queue (issue 23, point 2), on one worker: a started fan-out job's shares go
ahead of jobs submitted after it, and a tenant's job waits behind at most one job of each
other tenant, not behind another tenant's whole burst. With one FIFO (today's main before
service.fairness) the fan-out's shares and tenant B's job both waited for all of A's burst.
bench/fairness.py measures the same on two workers and four tenants."""

from __future__ import annotations

from datetime import datetime

import httpx
import pytest
from svc.helpers import wait_for

from .test_faults import _final, _submit

pytestmark = pytest.mark.slow
BURST = 5


def _at(job: dict, field: str) -> datetime:
    return datetime.fromisoformat(job[field])


def test_a_started_fanout_and_a_small_tenant_do_not_wait_for_a_burst(stack, tiny):
    stack.start_worker()
    key_b = stack.cli("keys", "create", "--tenant", "faults-b").strip().splitlines()[-1]
    tenant_b = {"Authorization": f"Bearer {key_b}"}
    body = stack.inputs("fairness", *tiny)
    fanout = _submit(stack, {**body, "parallelism": 2}, **tenant_b)
    burst = [_submit(stack, body) for _ in range(BURST)]  # tenant A: the stack's own key
    single = _submit(stack, body, **tenant_b)

    def final(job_id: str, headers: dict) -> dict:
        with httpx.Client(base_url=stack.url, timeout=30) as c:
            return wait_for(c, headers, job_id, timeout=180)

    fanned = final(fanout, tenant_b)
    b_job = final(single, tenant_b)
    a_jobs = [_final(stack, j, timeout=180) for j in burst]
    assert all(j["status"] == "succeeded" for j in [fanned, b_job, *a_jobs])
    a_starts = sorted(_at(j, "started_at") for j in a_jobs)
    # The fan-out's shares went ahead of the burst submitted after it had started.
    assert _at(fanned, "finished_at") <= a_starts[0], (fanned, a_starts)
    # Tenant B's job waited behind at most two of A's (A's first and second: levels 1 and 2,
    # where B's job, its second unfinished, is level 2 too), not the whole burst.
    ahead = sum(start < _at(b_job, "started_at") for start in a_starts)
    print(
        f"\nfairness on one worker: the fan-out done before A's burst began; B's job started "
        f"after {ahead} of A's {BURST} (FIFO: all {BURST})"
    )
    assert ahead <= 2, (ahead, a_starts, b_job["started_at"])
