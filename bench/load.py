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
import json
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from selfhost import SelfHosted  # noqa: E402

JOB = {"model": "builtin:smollm2-135m", "calibration": "builtin:stdlib-docs", "num_blocks": 1}


class RawClient:
    """HTTP/1.1 over asyncio streams, keep-alive connections reused, requests pre-rendered:
    about a tenth of httpx's CPU per request, so the generator (on the same 2 cores as the API)
    takes less of what is measured. Answers only a status (the body is read and dropped)."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    def render(self, method: str, path: str, body: dict | None = None) -> bytes:
        data = json.dumps(body).encode() if body is not None else b""
        kind = "Content-Type: application/json\r\n" if body is not None else ""
        return (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.head}{kind}"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode() + data

    async def send(self, request: bytes) -> int:
        reused = bool(self.idle)
        reader, writer = self.idle.pop() if reused else await self._connect()
        try:
            writer.write(request)
            line = await reader.readline()
            if not line and reused:  # the server closed it while idle (keep-alive timeout)
                writer.close()
                reader, writer = await self._connect()
                writer.write(request)
                line = await reader.readline()
            status = int(line.split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
        except Exception:
            writer.close()
            raise
        self.idle.append((reader, writer))
        return status

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


class HttpxClient:
    """The same requests through httpx (the heavier client the first figures were made with)."""

    def __init__(self, url: str, headers: dict[str, str], limit: int) -> None:
        limits = httpx.Limits(max_connections=limit)
        self.client = httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30)

    def render(self, method: str, path: str, body: dict | None = None) -> tuple:
        return method, path, body

    async def send(self, request: tuple) -> int:
        method, path, body = request
        return (await self.client.request(method, path, json=body)).status_code

    async def close(self) -> None:
        await self.client.aclose()


async def drive(client, request, rate: float, duration: float, limit: int) -> dict:
    """Open loop: a request every 1/rate s whatever the answers, at most `limit` in flight."""
    latencies: list[float] = []
    errors = 0
    gate = asyncio.Semaphore(limit)

    async def one() -> None:
        nonlocal errors
        async with gate:
            started = time.perf_counter()
            try:
                ok = await client.send(request) < 400
            except (OSError, ValueError, IndexError, httpx.HTTPError, asyncio.IncompleteReadError):
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
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as c:
        created = await c.post("/v1/jobs", json=JOB)
        created.raise_for_status()
        job_id = created.json()["id"]
    if args.client == "raw":
        client: RawClient | HttpxClient = RawClient(url, headers)
    else:
        client = HttpxClient(url, headers, args.concurrency)
    kinds = {
        "GET /v1/jobs/{id}": client.render("GET", f"/v1/jobs/{job_id}"),
        "GET /v1/jobs": client.render("GET", "/v1/jobs?limit=20"),
        "POST /v1/jobs": client.render("POST", "/v1/jobs", JOB),
    }
    results = {}
    try:
        # Not measured: the API's first connections (its pool, ours) and lazy imports.
        await drive(client, kinds["GET /v1/jobs/{id}"], args.rate, args.warmup, args.concurrency)
        for name, request in kinds.items():
            rate = args.rate if name != "POST /v1/jobs" else args.post_rate
            results[name] = await drive(client, request, rate, args.duration, args.concurrency)
            results[name]["rate"] = rate
    finally:
        await client.close()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url")
    ap.add_argument("--key")
    ap.add_argument("--rate", type=float, default=200, help="GET requests per second")
    ap.add_argument("--post-rate", type=float, default=50, help="POST requests per second")
    ap.add_argument("--duration", type=float, default=30, help="seconds per kind of request")
    ap.add_argument("--concurrency", type=int, default=64, help="requests in flight, at most")
    ap.add_argument("--api-workers", type=int, help="blockprune api --workers (default: its own)")
    ap.add_argument("--warmup", type=float, default=3, help="seconds of GET first, not measured")
    ap.add_argument("--client", choices=["raw", "httpx"], default="raw", help="load generator")
    ap.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--broker", default="redis://127.0.0.1:6379/14")
    args = ap.parse_args()
    if args.url:
        url = args.url
        results = asyncio.run(run_all(url, args.key, args))
    else:
        # the load, not the quota, is measured
        with SelfHosted(
            args.admin_dsn,
            args.broker,
            api_workers=args.api_workers,
            tenant_max_active_jobs="1000000",
        ) as stack:
            url = stack.url
            results = asyncio.run(run_all(url, stack.key, args))
    print(
        f"{url}: {args.duration:.0f} s per kind, at most {args.concurrency} in flight, "
        f"{args.client} client"
    )
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
