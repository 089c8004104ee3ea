"""Bounded load on the API: GET one job, list jobs, POST jobs, each at a fixed request rate for
a fixed time, with a cap on requests in flight. Prints throughput, p50/p99 latency and errors.

By default it hosts everything itself on this machine: a fresh database on the local
PostgreSQL (migrated), an API key, and `blockprune api` with its default worker count on a free
port; POSTed jobs go to a queue of their own on the local Redis, which is deleted afterwards
(no worker runs them). Or point it at a running API with --url and --key.

    python bench/load.py [--rate 200 --duration 30 --concurrency 64]

Last line: RESULT get_p99_ms=X list_p99_ms=X post_p99_ms=X errors=N
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from selfhost import SelfHosted  # noqa: E402

JOB = {"model": "builtin:smollm2-135m", "calibration": "builtin:stdlib-docs", "num_blocks": 1}


async def drive(client: httpx.AsyncClient, make, rate: float, duration: float, limit: int) -> dict:
    """Open loop: a request every 1/rate s whatever the answers, at most `limit` in flight."""
    latencies: list[float] = []
    errors = 0
    gate = asyncio.Semaphore(limit)

    async def one() -> None:
        nonlocal errors
        async with gate:
            started = time.perf_counter()
            try:
                response = await make(client)
                ok = response.status_code < 400
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - started)
            errors += not ok

    tasks = []
    start = time.perf_counter()
    n = 0
    while (now := time.perf_counter()) - start < duration:
        due = start + n / rate
        if due > now:
            await asyncio.sleep(due - now)
        tasks.append(asyncio.create_task(one()))
        n += 1
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "requests": n,
        "throughput": n / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "errors": errors,
    }


async def run_all(url: str, key: str, args: argparse.Namespace) -> dict[str, dict]:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) as c:
        created = await c.post("/v1/jobs", json=JOB)
        created.raise_for_status()
        job_id = created.json()["id"]
        kinds = {
            "GET /v1/jobs/{id}": lambda c: c.get(f"/v1/jobs/{job_id}"),
            "GET /v1/jobs": lambda c: c.get("/v1/jobs", params={"limit": 20}),
            "POST /v1/jobs": lambda c: c.post("/v1/jobs", json=JOB),
        }
        results = {}
        for name, make in kinds.items():
            rate = args.rate if name != "POST /v1/jobs" else args.post_rate
            results[name] = await drive(c, make, rate, args.duration, args.concurrency)
            results[name]["rate"] = rate
        return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url")
    ap.add_argument("--key")
    ap.add_argument("--rate", type=float, default=200, help="GET requests per second")
    ap.add_argument("--post-rate", type=float, default=50, help="POST requests per second")
    ap.add_argument("--duration", type=float, default=30, help="seconds per kind of request")
    ap.add_argument("--concurrency", type=int, default=64, help="requests in flight, at most")
    ap.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--broker", default="redis://127.0.0.1:6379/14")
    args = ap.parse_args()
    if args.url:
        url = args.url
        results = asyncio.run(run_all(url, args.key, args))
    else:
        # the load, not the quota, is measured
        with SelfHosted(args.admin_dsn, args.broker, tenant_max_active_jobs="1000000") as stack:
            url = stack.url
            results = asyncio.run(run_all(url, stack.key, args))
    print(f"{url}: {args.duration:.0f} s per kind, at most {args.concurrency} in flight")
    print(f"{'request':<20} {'rate':>6} {'done/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}")
    for name, r in results.items():
        print(
            f"{name:<20} {r['rate']:>6.0f} {r['throughput']:>7.1f} {r['p50_ms']:>7.1f} "
            f"{r['p99_ms']:>7.1f} {r['errors']:>6}"
        )
    p99 = [f"{r['p99_ms']:.1f}" for r in results.values()]
    errors = sum(r["errors"] for r in results.values())
    print(f"RESULT get_p99_ms={p99[0]} list_p99_ms={p99[1]} post_p99_ms={p99[2]} errors={errors}")


if __name__ == "__main__":
    main()
