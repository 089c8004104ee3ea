"""The fault-injection stack: private PostgreSQL, Redis and S3 (moto behind a gate), the API
and a worker as real processes, all on ports of their own. Built once for every fault test (each
test starts the worker it needs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from svc.helpers import (
    REPO,
    FlakyProxy,
    WorkerProcess,
    free_port,
    make_tokenizer,
    upload_dir,
    wait_until,
)

from .services import PrivatePostgres, PrivateRedis

BUCKET = "faults"


class Stack:
    def __init__(self, root: Path) -> None:
        import boto3
        from moto.server import ThreadedMotoServer

        self.root = root
        self.pg, self.redis = PrivatePostgres(), PrivateRedis()
        self.moto_port = free_port()
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self.moto_port, verbose=False)
        self.moto.start()
        self.gate = FlakyProxy(self.moto_port)  # S3 down: gate.shut(); back: gate.open()
        self.api_port = free_port()
        self.env = {
            "BLOCKPRUNE_DATABASE_URL": self.pg.url,
            "BLOCKPRUNE_BROKER_URL": self.redis.url,
            "BLOCKPRUNE_QUEUE": "faults",
            "BLOCKPRUNE_S3_ENDPOINT_URL": self.gate.url,
            "BLOCKPRUNE_S3_BUCKET": BUCKET,
            "BLOCKPRUNE_S3_SHARED_PREFIXES": "models/,calibration/",
            "BLOCKPRUNE_S3_MAX_ATTEMPTS": "2",
            "BLOCKPRUNE_CACHE_DIR": str(root / "cache"),
            "BLOCKPRUNE_WORK_DIR": str(root / "work"),
            "BLOCKPRUNE_LEASE_S": "2",
            "BLOCKPRUNE_HEARTBEAT_S": "0.4",
            "BLOCKPRUNE_REAPER_INTERVAL_S": "0.5",
            "BLOCKPRUNE_PROGRESS_WRITE_S": "0",
            "BLOCKPRUNE_RETRY_DELAY_S": "0.2",
            "BLOCKPRUNE_QUEUED_REQUEUE_AFTER_S": "4",
            "BLOCKPRUNE_OUTBOX_POLL_S": "0.2",
            "BLOCKPRUNE_OUTAGE_BACKOFF_BASE_S": "0.2",
            "BLOCKPRUNE_OUTAGE_BACKOFF_MAX_S": "1",
            "BLOCKPRUNE_WEBHOOK_ALLOW_PRIVATE": "true",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO),
        }
        # Setup and checks talk to moto directly, not through the gate.
        self.s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.moto_port}",
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self.s3.create_bucket(Bucket=BUCKET)
        self.cli("db", "upgrade")
        key = self.cli("keys", "create", "--tenant", "faults").strip().splitlines()[-1]
        self.headers = {"Authorization": f"Bearer {key}"}
        self.api: subprocess.Popen | None = None
        self.worker: WorkerProcess | None = None
        self.started_workers = 0
        self.start_api()

    # ---- processes ----------------------------------------------------------------------------
    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "blockprune.cli", *args],
            cwd=REPO,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    def start_api(self) -> None:
        log = (self.root / "api.log").open("ab")
        self.api = subprocess.Popen(
            [sys.executable, "-m", "blockprune.cli", "api", "--port", str(self.api_port)],
            cwd=REPO,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(self._api_up, timeout=60, what="API up")

    def _api_up(self) -> bool:
        import httpx

        assert self.api is not None and self.api.poll() is None, "the API exited"
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill_api(self) -> None:
        import signal

        assert self.api is not None
        os.killpg(self.api.pid, signal.SIGKILL)
        self.api.wait(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start_worker(self, delay_s: float = 0.0, **env: str) -> WorkerProcess:
        self.stop_worker()
        self.started_workers += 1
        log = self.root / f"worker-{self.started_workers}.log"
        self.worker = WorkerProcess(log, delay_s, {**self.env, **env})
        return self.worker

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    # ---- inputs -------------------------------------------------------------------------------
    def inputs(self, name: str, model_dir: Path, text: str) -> dict:
        """The tiny model and text under a prefix of their own: a worker has never cached them,
        so the job downloads them (through the gate)."""
        upload_dir(self.s3, BUCKET, f"models/{name}/", model_dir)
        self.s3.put_object(Bucket=BUCKET, Key=f"calibration/{name}.txt", Body=text.encode())
        return {
            "model": f"s3://{BUCKET}/models/{name}/",
            "calibration": f"s3://{BUCKET}/calibration/{name}.txt",
            "num_blocks": 3,
            "samples": 4,
            "seq_len": 16,
        }

    def close(self) -> None:
        self.stop_worker()
        if self.api is not None and self.api.poll() is None:
            self.kill_api()
        self.gate.shut()
        self.moto.stop()
        self.redis.close()
        self.pg.close()


@pytest.fixture(scope="package")
def stack(request):
    root = Path(tempfile.mkdtemp(prefix="blockprune-faults-"))
    built = Stack(root)
    yield built
    built.close()
    if request.session.testsfailed:
        print(f"\nfault test logs kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="package")
def tiny(tmp_path_factory) -> tuple[Path, str]:
    """A tiny random 4-layer Llama (character tokenizer) and a calibration text."""
    from pydoc_data.topics import topics

    from conftest import tiny_model

    local = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", layers=4, seed=0).save_pretrained(local)
    make_tokenizer().save_pretrained(local)
    text = "\n\n".join(topics[k] for k in sorted(topics))[:6000]
    return local, text
