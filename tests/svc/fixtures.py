"""Fixtures for the service and security tests, against the machine's real PostgreSQL and Redis.

Each test session gets its own database (blockprune_test_<pid>, dropped at the end), its own
Celery queue, a moto S3 server on a free port, and real `python -m worker worker` processes.
The environment is set when this file is imported, before any service module reads Settings.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .helpers import free_port

RUN_ID = os.getpid()
DB_NAME = f"blockprune_test_{RUN_ID}"
ADMIN_DSN = os.environ.get(
    "BLOCKPRUNE_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TMP = Path(tempfile.mkdtemp(prefix="blockprune-service-tests-"))
S3_PORT = free_port()
BUCKET = "blockprune-test"
TEST_ENV = {
    "BLOCKPRUNE_DATABASE_URL": ADMIN_DSN.replace("postgresql://", "postgresql+psycopg://").rsplit(
        "/", 1
    )[0]
    + f"/{DB_NAME}",
    "BLOCKPRUNE_BROKER_URL": f"redis://127.0.0.1:6379/{8 + RUN_ID % 8}",
    "BLOCKPRUNE_QUEUE": f"blockprune-test-{RUN_ID}",
    "BLOCKPRUNE_S3_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
    "BLOCKPRUNE_S3_BUCKET": BUCKET,
    # The tiny test model and texts live under these, readable by every tenant.
    "BLOCKPRUNE_S3_SHARED_PREFIXES": "models/,calibration/",
    "BLOCKPRUNE_CACHE_DIR": str(TMP / "cache"),
    "BLOCKPRUNE_WORK_DIR": str(TMP / "work"),
    # Short timings, so a dead worker's job is picked up in seconds.
    "BLOCKPRUNE_LEASE_S": "2",
    "BLOCKPRUNE_HEARTBEAT_S": "0.4",
    "BLOCKPRUNE_REAPER_INTERVAL_S": "0.5",
    "BLOCKPRUNE_PROGRESS_WRITE_S": "0",
    "BLOCKPRUNE_RETRY_DELAY_S": "0.2",
    "BLOCKPRUNE_QUEUED_REQUEUE_AFTER_S": "600",
    "BLOCKPRUNE_WEBHOOK_ALLOW_PRIVATE": "true",
    "BLOCKPRUNE_WEBHOOK_BACKOFF_S": "0.2",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "HF_HUB_OFFLINE": "1",
}
os.environ.update(TEST_ENV)

import shutil  # noqa: E402

import psycopg  # noqa: E402
import pytest  # noqa: E402

from .helpers import WorkerPool, make_tokenizer, upload_dir  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def scratch_dir(request):
    """The session's scratch space (caches, worker logs, the tiny model); kept on failure."""
    yield TMP
    if request.session.testsfailed:
        print(f"\nservice test files and worker logs kept in {TMP}")
    else:
        shutil.rmtree(TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def database() -> str:
    """A fresh, migrated database for this session."""
    from blockprune.cli import main as service_cli
    from service.db import reset_engine
    from service.settings import get_settings

    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}"')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    get_settings.cache_clear()
    reset_engine()
    assert service_cli(["db", "upgrade"]) == 0
    yield os.environ["BLOCKPRUNE_DATABASE_URL"]
    reset_engine()
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')


@pytest.fixture(scope="session")
def s3_server():
    from moto.server import ThreadedMotoServer

    from service.settings import get_settings
    from service.storage import s3_client

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    s3 = s3_client(get_settings())
    s3.create_bucket(Bucket=BUCKET)
    yield s3
    server.stop()


@pytest.fixture(scope="session")
def service(database, s3_server):
    """The API in-process (FastAPI TestClient), on the session's database and S3."""
    from fastapi.testclient import TestClient

    from api.app import create_app

    with TestClient(create_app()) as client:
        yield client


@pytest.fixture(scope="session")
def workers(database, s3_server):
    import redis

    pool = WorkerPool(TMP / "logs")
    yield pool
    pool.stop()
    # Drop messages left for this session's queue (duplicates, the killed worker's).
    redis.Redis.from_url(TEST_ENV["BLOCKPRUNE_BROKER_URL"]).delete(TEST_ENV["BLOCKPRUNE_QUEUE"])


def _new_key(tenant: str) -> str:
    from service.db import transaction
    from service.keys import create_key

    with transaction() as session:
        return create_key(session, tenant).key


@pytest.fixture(scope="session")
def key_a(database) -> dict:
    return {"Authorization": f"Bearer {_new_key('tenant-a')}"}


@pytest.fixture(scope="session")
def key_b(database) -> dict:
    return {"Authorization": f"Bearer {_new_key('tenant-b')}"}


@pytest.fixture(scope="session")
def tiny_llama(s3_server):
    """A tiny random 4-layer Llama with a character tokenizer, uploaded to S3, and a
    calibration text next to it. Returns the URIs and the in-memory model."""
    from pydoc_data.topics import topics

    from conftest import tiny_model

    model = tiny_model("llama", layers=4, seed=0)
    local = TMP / "tiny-llama"
    model.save_pretrained(local)
    make_tokenizer().save_pretrained(local)
    upload_dir(s3_server, BUCKET, "models/tiny-llama/", local)
    text = "\n\n".join(topics[k] for k in sorted(topics))[:6000]
    s3_server.put_object(Bucket=BUCKET, Key="calibration/docs.txt", Body=text.encode())
    (TMP / "docs.txt").write_text(text)
    return {
        "model": f"s3://{BUCKET}/models/tiny-llama/",
        "calibration": f"s3://{BUCKET}/calibration/docs.txt",
        "local_dir": local,
        "calibration_path": TMP / "docs.txt",
        "module": model,
    }


@pytest.fixture
def new_job(database):
    """A queued job (straight into the database), and the ids the reaper would enqueue."""
    from contract import JobSpec
    from service import jobstore
    from service.db import transaction
    from service.keys import create_key

    def make(**fields):
        with transaction() as s:
            tenant = create_key(s, "lease-tests").tenant_id
            job, _ = jobstore.create_job(
                s,
                tenant_id=tenant,
                spec=JobSpec(
                    model="builtin:smollm2-135m", calibration="builtin:stdlib-docs", num_blocks=1
                ),
                user_metadata={},
                webhook_url=fields.get("webhook_url"),
                idempotency_key=None,
                request_hash="x",
                max_attempts=fields.get("max_attempts", 2),
            )
            return job.id

    return make


class Sent(list):
    """The queue messages this process sent, as (kind, ref) pairs, instead of a broker."""

    def flush(self) -> list[str]:
        """Relay the outbox now; the refs of every message sent so far."""
        from service.outbox import relay_once
        from service.settings import get_settings

        relay_once(get_settings())
        return [ref for _, ref in self]


@pytest.fixture
def sent(workers, monkeypatch) -> Sent:
    """No test worker (its reaper and relay act on their own schedule), and the messages this
    process's relays send, recorded instead of sent."""
    from service import queue

    workers.stop()
    record = Sent()
    monkeypatch.setattr(
        queue, "send", lambda kind, ref, task_id=None, priority=0: record.append((kind, ref))
    )
    return record


@pytest.fixture(scope="session")
def live_api(database, s3_server):
    """The API over real HTTP (uvicorn in a thread, on a free port, the app factory), for
    clients that need a socket: blockprune.client, the `blockprune jobs` commands. Its URL."""
    import threading

    import uvicorn

    from .helpers import wait_until

    port = free_port()
    config = uvicorn.Config(
        "api.app:create_app", factory=True, host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="live-api", daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), timeout=30, what="uvicorn")
    assert server.started, "uvicorn did not start (see the log above)"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
