"""The queue's fairness (service.fairness): a started job's work items first, then each
tenant's jobs by their rank among its unfinished jobs; and Redis hands them out in that order."""

from __future__ import annotations

import uuid


def _jobs(session, tenant: str, n: int) -> list[str]:
    from contract import JobSpec
    from service import jobstore
    from service.keys import create_key

    tenant_id = create_key(session, tenant).tenant_id
    spec = JobSpec(model="builtin:smollm2-135m", calibration="builtin:stdlib-docs", num_blocks=1)
    made = [
        jobstore.create_job(
            session,
            tenant_id=tenant_id,
            spec=spec,
            user_metadata={},
            webhook_url=None,
            idempotency_key=None,
            request_hash="x",
            max_attempts=1,
        )[0]
        for _ in range(n)
    ]
    session.flush()
    return [job.id for job in made]


def test_levels_go_round_robin_over_tenants_and_items_first(database):
    from contract import JobStatus
    from service.db import transaction
    from service.fairness import FIRST_JOB_LEVEL, ITEM_LEVEL, LAST_JOB_LEVEL, level
    from service.tables import Job
    from service.transitions import finish

    with transaction() as s:
        burst = _jobs(s, f"burst-{uuid.uuid4().hex[:6]}", 12)
        single = _jobs(s, f"single-{uuid.uuid4().hex[:6]}", 1)
        assert [level(s, "job", j) for j in burst] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9]
        assert level(s, "job", single[0]) == FIRST_JOB_LEVEL  # not behind the burst
        assert level(s, "item", "1") == ITEM_LEVEL
        assert level(s, "job", burst[-1], fair=False) == ITEM_LEVEL  # one FIFO
        for job_id in burst[:9]:  # the burst's first nine end: the rest move up
            finish(s, s.get(Job, job_id), JobStatus.CANCELLED)
        assert [level(s, "job", j) for j in burst[9:]] == [1, 2, 3]
        assert LAST_JOB_LEVEL == 9


def test_redis_hands_out_the_lowest_level_first(database):
    """The Celery app's transport options (service.queue) make Redis keep a list per level
    and a consumer empty level 0's first."""
    from service.queue import celery_app

    app, queue = celery_app(), f"fairness-{uuid.uuid4().hex[:8]}"
    for ref, priority in (("job-late", 9), ("job-first", 1), ("item", 0), ("job-second", 2)):
        app.send_task("blockprune.none", args=[ref], queue=queue, priority=priority)
    got = []
    with app.connection_for_read() as conn:
        simple = conn.SimpleQueue(queue)
        try:
            for _ in range(4):
                message = simple.get(timeout=5)
                got.append(message.payload[0][0])
                message.ack()
        finally:
            simple.queue.delete()
            simple.close()
    assert got == ["item", "job-first", "job-second", "job-late"]
