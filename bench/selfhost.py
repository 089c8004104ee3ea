"""A service stack of our own for the benches: a fresh database on the local PostgreSQL
(migrated), a queue of its own on the local Redis, an S3 (moto's server, in this process) with
a bucket, an API key, `blockprune api` on a free port, and workers on demand. Everything is
removed on exit."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "blockprune"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SelfHosted:
    def __init__(
        self, admin_dsn: str, broker: str, api_workers: int | None = None, **settings: str
    ) -> None:
        """`settings`: more BLOCKPRUNE_* variables (without the prefix), e.g. lease_s="4";
        `api_workers`: `blockprune api --workers` (None: its default)."""
        self.api_workers = api_workers
        self.admin_dsn, self.broker = admin_dsn, broker
        self.db = f"blockprune_bench_{uuid.uuid4().hex[:8]}"
        self.queue = f"blockprune-bench-{uuid.uuid4().hex[:8]}"
        base = admin_dsn.replace("postgresql://", "postgresql+psycopg://").rsplit("/", 1)[0]
        self.s3_port = free_port()
        self.env = {
            **os.environ,
            "BLOCKPRUNE_DATABASE_URL": f"{base}/{self.db}",
            "BLOCKPRUNE_BROKER_URL": broker,
            "BLOCKPRUNE_QUEUE": self.queue,
            "BLOCKPRUNE_S3_ENDPOINT_URL": f"http://127.0.0.1:{self.s3_port}",
            "BLOCKPRUNE_S3_BUCKET": "bench",
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            **{f"BLOCKPRUNE_{k.upper()}": v for k, v in settings.items()},
        }
        self.api: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    def __enter__(self) -> SelfHosted:
        import logging

        import boto3
        import psycopg
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
        self.s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=self.s3_port, verbose=False)
        self.s3.start()
        boto3.client(
            "s3",
            endpoint_url=self.env["BLOCKPRUNE_S3_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        ).create_bucket(Bucket="bench")
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db}"')
        self.cli("db", "upgrade")
        self.key = self.cli("keys", "create", "--tenant", "bench").strip().splitlines()[-1]
        port = free_port()
        self.api = subprocess.Popen(
            [*CLI, "api", "--host", "127.0.0.1", "--port", str(port)]
            + (["--workers", str(self.api_workers)] if self.api_workers else []),
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{port}"
        for _ in range(150):
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code < 500:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        return self

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [*CLI, *args], env=self.env, check=True, capture_output=True, text=True, cwd=ROOT
        )
        return done.stdout

    def start_worker(self, log: Path | None = None, **env: str) -> subprocess.Popen:
        """A `python -m worker worker` in its own process group (kill_worker takes its pool
        child too); returns once it is ready."""
        out = log.open("ab") if log else subprocess.DEVNULL
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "worker", "--loglevel", "INFO"],
            env={**self.env, **env},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers.append(proc)
        return proc

    def kill_worker(self, proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        self.workers.remove(proc)

    def __exit__(self, *_) -> None:
        import psycopg
        import redis

        for proc in list(self.workers):
            self.kill_worker(proc)
        if self.api is not None:
            self.api.terminate()
            self.api.wait(10)
        self.s3.stop()
        redis.Redis.from_url(self.broker).delete(self.queue)
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{self.db}" WITH (FORCE)')
