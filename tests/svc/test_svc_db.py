"""Migrations, the keys command, and the lease protocol (claim, fencing, reaper) on the real
database. The queue messages are recorded (the `sent` fixture), so no worker runs these jobs."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest
from sqlalchemy import text

from .fixtures import ADMIN_DSN, RUN_ID
from .helpers import REPO

TABLES = {"tenants", "api_keys", "jobs", "job_events", "webhook_deliveries"}


def _tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r[0] for r in rows}


def test_migrations_upgrade_from_empty_and_downgrade_back():
    name = f"blockprune_migrations_{RUN_ID}"
    dsn = ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    env = {
        **os.environ,
        "BLOCKPRUNE_DATABASE_URL": dsn.replace("postgresql://", "postgresql+psycopg://"),
    }
    try:
        # `alembic upgrade head` from the repository root, as documented.
        alembic = [sys.executable, "-m", "alembic", "upgrade", "head"]
        subprocess.run(alembic, cwd=REPO, env=env, check=True, capture_output=True)
        assert TABLES <= _tables(dsn)
        down = [sys.executable, "-m", "blockprune", "db", "downgrade", "base"]
        subprocess.run(down, cwd=REPO, env=env, check=True, capture_output=True)
        assert _tables(dsn) == {"alembic_version"}
        up = [sys.executable, "-m", "blockprune", "db", "upgrade"]
        subprocess.run(up, cwd=REPO, env=env, check=True, capture_output=True)
        assert TABLES <= _tables(dsn)
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_keys_create_prints_the_key_last_and_stores_only_its_hash(service, database):
    from service.db import get_engine

    out = subprocess.run(
        [sys.executable, "-m", "blockprune", "keys", "create", "--tenant", "cli-tenant"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    key = out.strip().splitlines()[-1]
    assert key.startswith("bp_") and " " not in key
    assert service.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    with get_engine().connect() as conn:
        stored = conn.execute(text("SELECT key_hash, prefix FROM api_keys")).all()
    assert all(key not in row.key_hash for row in stored)
    assert any(key.startswith(row.prefix) for row in stored)


def _expire_lease(job_id: str) -> None:
    from service.db import transaction

    with transaction() as s:
        s.execute(
            text("UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = :id"),
            {"id": job_id},
        )


def _job(job_id: str):
    from service.db import transaction
    from service.tables import Job

    with transaction() as s:
        return s.get(Job, job_id)


def test_lease_fences_a_worker_that_lost_it(new_job, sent):
    from contract import Progress, RemovedBlock, SearchState
    from service.settings import get_settings
    from worker.leases import Lease, LeaseLost
    from worker.reaper import reap_once

    job_id = new_job(webhook_url="http://127.0.0.1:9/hook")
    old = Lease.claim(job_id, "worker-1", lease_s=60)
    assert old is not None and old.attempt == 1
    assert Lease.claim(job_id, "worker-2", lease_s=60) is None  # held: nobody else gets it
    one = SearchState(removed=[RemovedBlock(block="mlp", layer=0, ppl=2.0)])
    old.checkpoint(one, Progress(iteration=1))

    _expire_lease(job_id)  # worker-1 stalls past its lease
    assert reap_once(get_settings()) == [job_id]
    assert sent.flush() == [job_id]
    job = _job(job_id)
    assert job.status == "queued" and job.lease_token is None and job.state["blocks_removed"] == 1

    new = Lease.claim(job_id, "worker-2", lease_s=60)
    assert new is not None and new.attempt == 2 and new.state == one
    for stale_write in (
        lambda: old.renew(),
        lambda: old.checkpoint(SearchState(), Progress()),
        lambda: old.succeed([], commit=lambda: None, state=SearchState(), progress=Progress()),
        lambda: old.fail({"code": "x", "message": "y"}),
    ):
        with pytest.raises(LeaseLost):
            stale_write()
    assert _job(job_id).state["blocks_removed"] == 1  # nothing of the old worker's got through

    # Out of attempts: the reaper fails the job instead of re-queueing it, and queues its webhook.
    _expire_lease(job_id)
    assert reap_once(get_settings()) == []
    assert sent.flush() == [job_id]  # nothing more sent
    job = _job(job_id)
    assert job.status == "failed" and job.error["code"] == "attempts_exhausted"
    with pytest.raises(LeaseLost):
        new.renew()
    from service.db import get_engine

    with get_engine().connect() as conn:
        hooks = conn.execute(
            text("SELECT payload FROM webhook_deliveries WHERE job_id = :id"), {"id": job_id}
        ).all()
    assert [h.payload["type"] for h in hooks] == ["job.failed"]


def test_claim_honours_cancel_and_release_requeues(new_job, sent):
    from service.db import transaction
    from service.tables import Job
    from service.transitions import request_cancel
    from worker.leases import Lease

    job_id = new_job(max_attempts=3)
    lease = Lease.claim(job_id, "worker-1", lease_s=60)
    lease.release("error", {"code": "internal_error", "message": "boom"}, delay_s=0)
    assert _job(job_id).status == "queued"
    assert sent.flush() == [job_id]  # its message went with it

    lease = Lease.claim(job_id, "worker-1", lease_s=60)
    with transaction() as s:
        request_cancel(s, s.get(Job, job_id, with_for_update=True))
    assert _job(job_id).status == "cancelling"
    assert not lease.cancel_requested
    lease.renew()
    assert lease.cancel_requested  # the heartbeat sees the request
    _expire_lease(job_id)  # ...but the worker dies before stopping
    assert Lease.claim(job_id, "worker-2", lease_s=60) is None
    assert _job(job_id).status == "cancelled"


def test_a_cancel_is_decided_before_or_after_the_manifest_never_during(new_job, sent):
    """Success writes the manifest in the transaction that holds the job's row: a cancel
    requested before it wins (no manifest is written, the job ends cancelled); one that comes
    while the manifest is written waits for the row and finds the job succeeded (the cancel
    route answers 409 then)."""
    import threading

    from contract import Progress, SearchState
    from service.db import transaction
    from service.tables import Job
    from service.transitions import request_cancel
    from worker.leases import CancelRequested, Lease

    first = new_job()
    lease = Lease.claim(first, "worker-1", lease_s=60)
    with transaction() as s:
        request_cancel(s, s.get(Job, first, with_for_update=True))
    written = []
    with pytest.raises(CancelRequested):
        lease.succeed([], commit=lambda: written.append(first), state=SearchState())
    assert written == [] and _job(first).status == "cancelling"
    lease.cancel(reason="stopped before its export was committed")
    assert _job(first).status == "cancelled"

    second = new_job()
    lease = Lease.claim(second, "worker-1", lease_s=60)
    in_commit, go, seen = threading.Event(), threading.Event(), []

    def manifest() -> None:
        in_commit.set()
        assert go.wait(10)

    def cancel() -> None:
        with transaction() as s:
            job = s.get(Job, second, with_for_update=True)
            seen.append(job.status)

    winner = threading.Thread(
        target=lambda: lease.succeed([], commit=manifest, state=SearchState(), progress=Progress())
    )
    winner.start()
    assert in_commit.wait(10)
    canceller = threading.Thread(target=cancel)
    canceller.start()
    canceller.join(0.5)
    assert canceller.is_alive() and seen == []  # it waits for the success's transaction
    go.set()
    winner.join(10)
    canceller.join(10)
    assert seen == ["succeeded"]
