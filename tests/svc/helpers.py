"""Helpers for the service tests: free ports, a tiny tokenizer, S3 uploads, worker processes,
polling. Only the standard library at import time: conftest imports this before it sets the
environment the service reads."""

from __future__ import annotations

import os
import signal
import socket
import string
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SLOW_WORKER = REPO / "tests" / "svc" / "slow_worker.py"  # the worker, slowed for tests
FINAL = ("succeeded", "failed", "cancelled")
# Every wait below polls for a state and returns as soon as it is reached: its bound only ends a
# test that would otherwise hang. On a machine busy with other work (a compile, a prune beside the
# suite) a worker can take several times as long to get there, so each bound is multiplied by
# BLOCKPRUNE_TEST_PATIENCE (default 4). Timings that a test asserts are not waits and stay exact.
PATIENCE = float(os.environ.get("BLOCKPRUNE_TEST_PATIENCE", "4"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tokenizer():
    """A character-level fast tokenizer over 96 printable characters (+ <unk> = 97 ids, the
    vocabulary of tests/conftest.py's tiny models), built offline."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{c: i + 1 for i, c in enumerate(string.printable[:96])}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>")


def upload_dir(s3, bucket: str, prefix: str, directory: Path) -> None:
    for path in sorted(directory.iterdir()):
        if path.is_file():
            s3.upload_file(str(path), bucket, prefix + path.name)


def job_body(tiny: dict, **overrides) -> dict:
    body = {
        "model": tiny["model"],
        "calibration": tiny["calibration"],
        "num_blocks": 3,
        "samples": 4,
        "seq_len": 16,
    }
    return {**body, **overrides}


def wait_for(client, headers, job_id: str, statuses=FINAL, timeout: float = 60.0) -> dict:
    """Poll the job until its status is one of `statuses`; fail with the job after
    `timeout` x PATIENCE seconds."""
    deadline = time.monotonic() + timeout * PATIENCE
    while True:
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job still {job['status']} after {timeout * PATIENCE}s: {job}")
        time.sleep(0.1)


def wait_until(predicate, timeout: float = 60.0, what: str = "condition"):
    """Poll until `predicate()` is truthy and return it; fail after `timeout` x PATIENCE seconds."""
    deadline = time.monotonic() + timeout * PATIENCE
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout * PATIENCE}s waiting for {what}")
        time.sleep(0.1)
    return value


def events(client, headers, job_id: str, kind: str | None = None) -> list[dict]:
    data = client.get(f"/v1/jobs/{job_id}/events", headers=headers).json()["data"]
    return [e for e in data if kind is None or e["kind"] == kind]


class WorkerProcess:
    """One worker process (Celery, prefork, concurrency 1, with reaper), in its own process
    group so that kill -9 takes the pool child with it. It runs through tests/svc/slow_worker.py,
    which slows the product's worker by `delay_s` per iteration (and the score delay of `env`)."""

    def __init__(self, log_path: Path, delay_s: float, env: dict[str, str] | None = None) -> None:
        self.log_path, self.delay_s, self.extra_env = log_path, delay_s, env or {}
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "BLOCKPRUNE_TEST_ITERATION_DELAY_S": str(delay_s),
            "OMP_NUM_THREADS": "1",  # tiny models; leave the other core to the tests
            **self.extra_env,
        }
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(SLOW_WORKER), "worker", "--loglevel", "INFO"],
            cwd=REPO,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(self._ready, timeout=60, what=f"worker ready (log: {log_path})")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited: {self.log_path.read_text()[-3000:]}")
        return b" ready." in self.log_path.read_bytes()

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()


class WorkerPool:
    """At most one test worker at a time; `ensure(delay_s)` (re)starts one with that
    per-iteration delay (a testing aid that makes jobs slow enough to kill or cancel), and
    `start(delay_s, env)` one with its own settings (BLOCKPRUNE_* variables)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir, self.current, self.started = log_dir, None, 0
        self.others: list[WorkerProcess] = []  # more workers at once (start_many)
        self.cache_dir = Path(os.environ["BLOCKPRUNE_CACHE_DIR"])

    def ensure(self, delay_s: float = 0.0) -> WorkerProcess:
        current = self.current
        if current is not None and current.delay_s == delay_s and not current.extra_env:
            if current.proc.poll() is None:
                return current
        return self.start(delay_s)

    def start(self, delay_s: float = 0.0, env: dict[str, str] | None = None) -> WorkerProcess:
        self.stop()
        self.started += 1
        log_path = self.log_dir / f"worker-{self.started}.log"
        self.current = WorkerProcess(log_path, delay_s, env)
        return self.current

    def start_many(
        self, n: int, delay_s: float = 0.0, env: dict[str, str] | None = None
    ) -> list[WorkerProcess]:
        """`n` workers at once (they share the queue), each with its own settings copy."""
        first = self.start(delay_s, {**(env or {}), "BLOCKPRUNE_TEST_WORKER": "0"})
        for k in range(1, n):
            self.started += 1
            log_path = self.log_dir / f"worker-{self.started}.log"
            extra = {**(env or {}), "BLOCKPRUNE_TEST_WORKER": str(k)}
            self.others.append(WorkerProcess(log_path, delay_s, extra))
        return [first, *self.others]

    def stop(self) -> None:
        for other in self.others:
            other.stop()
        self.others = []
        if self.current is not None:
            self.current.stop()
            self.current = None


class FlakyProxy:
    """A TCP proxy in front of `target_port` that forwards bytes both ways, and fails on demand:
    it drops the next `fail_next` connections at once (a service briefly unreachable); shut, it
    refuses connections and cuts those in flight until it is opened again on the same port
    (a service down); hung, it accepts connections and never answers (a service that hangs)."""

    def __init__(self, target_port: int) -> None:
        self.target_port, self.fail_next, self.dropped = target_port, 0, 0
        self.hung = False  # accept connections and never answer (a hung service)
        self.port = free_port()
        self.server: socket.socket | None = None
        self.live: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.open()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open(self) -> None:
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.server,), daemon=True).start()

    def shut(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        with self.lock:
            for conn in list(self.live):
                _close(conn)
            self.live.clear()

    close = shut

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            if self.fail_next > 0:
                self.fail_next -= 1
                self.dropped += 1
                client.close()
                continue
            if self.hung:  # held open, read from, never answered
                with self.lock:
                    self.live.add(client)
                threading.Thread(target=self._swallow, args=(client,), daemon=True).start()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.live.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def hang(self) -> None:
        """From now on, connections are accepted and never answered; those open stall (what
        goes through them is swallowed)."""
        self.hung = True

    def unhang(self) -> None:
        self.hung = False
        with self.lock:
            for conn in list(self.live):
                _close(conn)
            self.live.clear()

    def _swallow(self, client: socket.socket) -> None:
        try:
            while client.recv(65536):
                pass
        except OSError:
            pass

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if not self.hung:
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                _close(s)
            with self.lock:
                self.live.difference_update((source, sink))


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
