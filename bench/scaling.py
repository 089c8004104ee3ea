"""One search over more workers: the same job on the real stack (PostgreSQL, Redis, Celery
worker processes, moto's S3 server) with 1 worker at 1 torch thread, 2 workers at 1 thread
each (parallelism 2), and 1 worker at 2 threads (the honest single-worker alternative on a
2-core machine), side by side in one run.

    python bench/scaling.py    # SmolLM2-135M, 16 x 128 WikiText-2 valid tokens, 2 iterations

Needs the machine's PostgreSQL and Redis (scripts/services.sh); makes and drops its own database.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "wikitext-2" / "valid.txt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument(
        "--cost-model", action="store_true", help="print the 7B cost model only (no stack)"
    )
    args = parser.parse_args()
    if args.cost_model:
        print_cost_model()
        return

    run = os.getpid()
    scratch = Path(tempfile.mkdtemp(prefix="blockprune-scaling-"))
    database = f"blockprune_bench_{run}"
    s3_port = free_port()
    env = {
        "BLOCKPRUNE_DATABASE_URL": args.admin_dsn.replace(
            "postgresql://", "postgresql+psycopg://"
        ).rsplit("/", 1)[0]
        + f"/{database}",
        "BLOCKPRUNE_BROKER_URL": "redis://127.0.0.1:6379/7",
        "BLOCKPRUNE_QUEUE": f"blockprune-bench-{run}",
        "BLOCKPRUNE_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
        "BLOCKPRUNE_S3_BUCKET": "bench",
        "BLOCKPRUNE_S3_SHARED_PREFIXES": "calibration/",
        "BLOCKPRUNE_CACHE_DIR": str(Path.home() / ".cache" / "blockprune" / "bench"),
        "BLOCKPRUNE_WORK_DIR": str(scratch / "work"),
        "BLOCKPRUNE_DEVICE": "cpu",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
    }
    os.environ.update(env)

    import psycopg
    import redis
    from fastapi.testclient import TestClient
    from moto.server import ThreadedMotoServer

    from api.app import create_app
    from core.models import load_model
    from service.db import reset_engine, transaction
    from service.keys import create_key
    from service.settings import get_settings
    from service.storage import s3_client

    with psycopg.connect(args.admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}"')
        conn.execute(f'CREATE DATABASE "{database}"')
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    moto.start()
    workers: list[subprocess.Popen] = []
    try:
        subprocess.run(
            [sys.executable, "-m", "blockprune", "db", "upgrade"],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        s3 = s3_client(get_settings())
        s3.create_bucket(Bucket="bench")
        s3.upload_file(str(DATA), "bench", "calibration/wikitext-2-valid.txt")
        load_model("builtin:smollm2-135m", cache_dir=env["BLOCKPRUNE_CACHE_DIR"])  # convert once
        with transaction() as session:
            key = create_key(session, "bench").key
        client = TestClient(create_app())
        headers = {"Authorization": f"Bearer {key}"}
        body = {
            "model": "builtin:smollm2-135m",
            "calibration": "s3://bench/calibration/wikitext-2-valid.txt",
            "num_blocks": args.iterations,
            "block_types": "mix",
            "samples": args.samples,
            "seq_len": args.seq_len,
        }
        print(
            f"SmolLM2-135M, {args.samples} x {args.seq_len} tokens of WikiText-2 valid, "
            f"{args.iterations} iterations, mix; {os.cpu_count()} cores",
            flush=True,
        )
        configs = [
            ("1 worker x 1 thread", 1, 1),
            ("2 workers x 1 thread", 2, 1),
            ("1 worker x 2 threads", 1, 2),
        ]
        results = []
        for label, count, threads in configs:
            workers = [
                _worker(scratch / f"{label.replace(' ', '_')}-{k}.log", threads)
                for k in range(count)
            ]
            started = time.monotonic()
            job_id = client.post(
                "/v1/jobs", json={**body, "parallelism": count}, headers=headers
            ).json()["id"]
            while True:
                job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(1.0)
            seconds = time.monotonic() - started
            for w in workers:
                os.killpg(w.pid, signal.SIGTERM)
                w.wait(timeout=30)
            workers = []
            assert job["status"] == "succeeded", job
            picks = [(r["block"], r["layer"], r["ppl"]) for r in job["removed"]]
            results.append((label, seconds, job["base_ppl"], picks))
            print(f"{label}: {seconds:.1f} s, picks {picks}", flush=True)
        print()
        print("| setting | job time s | base PPL | picks (block.layer: PPL) |")
        print("|---|---:|---:|---|")
        for label, seconds, base, picks in results:
            shown = ", ".join(f"{b}.{layer}: {ppl:.6f}" for b, layer, ppl in picks)
            print(f"| {label} | {seconds:.1f} | {base:.6f} | {shown} |")
        identical = all((r[2], r[3]) == (results[0][2], results[0][3]) for r in results)
        one, two, one_two_threads = (r[1] for r in results)
        print(
            f"RESULT picks_identical={str(identical).lower()} "
            f"speedup_2w_vs_1w={one / two:.2f} speedup_2w_vs_1w2t={one_two_threads / two:.2f}"
        )
    finally:
        for w in workers:
            os.killpg(w.pid, signal.SIGKILL)
        moto.stop()
        reset_engine()
        redis.Redis.from_url(env["BLOCKPRUNE_BROKER_URL"]).delete(env["BLOCKPRUNE_QUEUE"])
        with psycopg.connect(args.admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def print_cost_model(layers: int = 32, hidden: int = 4096, ffn: int = 11008, vocab: int = 32000):
    """What N workers give per iteration for Llama-2-7B, from the work of each candidate.

    Per token, an attention block costs ~2 x 4 h^2 FLOPs, an MLP block ~2 x 3 h f, the lm_head
    2 h V. A share first builds the activations of the removed set (one full pass, B), then each
    candidate at block position p runs the blocks after p and the lm_head. Shares are balanced
    by cost, so an iteration takes about B + max(share), and a share holds one candidate at
    the least. Attention's sequence-length term and communication are left out: on a GPU the
    per-share full pass and the model load are the overheads that stay."""
    mha, mlp, head = 8 * hidden**2, 6 * hidden * ffn, 2 * hidden * vocab
    blocks = [mha if p % 2 == 0 else mlp for p in range(2 * layers)]
    full = sum(blocks) + head
    after = [sum(blocks[p + 1 :]) + head for p in range(2 * layers)]  # candidate at position p
    total = sum(after)
    print(f"Llama-2-7B cost model, iteration 1 ({2 * layers} candidates), GFLOP per token:")
    print(f"full pass B = {full / 1e9:.1f}, all candidates = {total / 1e9:.1f}")
    print("| workers | iteration work per worker (GFLOP/token) | speedup vs 1 |")
    print("|---:|---:|---:|")
    one = full + total
    for n in (1, 2, 4, 8, 16, 32, 64):
        share = max(total / n, max(after))  # no share is smaller than one candidate
        print(f"| {n} | {(full + share) / 1e9:.1f} | {one / (full + share):.1f} |")


def _worker(log: Path, threads: int) -> subprocess.Popen:
    """A `python -m worker worker` process at `threads` torch threads, ready to take work."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out = log.open("wb")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "worker", "--loglevel", "INFO"],
        cwd=REPO,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while b"ready" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    return proc


if __name__ == "__main__":
    main()
