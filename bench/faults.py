"""kill -9 of the worker at random points, repeated: does every job end with the result of an
undisturbed run, and how much work is done again?

On a stack of its own (bench/selfhost.py: a fresh database, its own queue, the API), it runs one
undisturbed job on SmolLM2-135M (the reference), then `--trials` more, each with the worker
killed with -9 at a random moment of the job and a new worker started at once. The killed
attempt's lease expires (`--lease-s`), the reaper re-queues the job, and the new worker resumes
from the last committed iteration. Per trial it reports:
  - identical: the picks and PPLs equal the reference's;
  - candidates recomputed: those scored in the iteration in flight when the worker died (read
    from the job's progress just before the kill; the engine checkpoints whole iterations);
  - iterations recomputed: iterations committed more than once (from the job's events; 0 by
    construction, checked here);
  - the time the kill cost (the trial's time over the reference's).

    python bench/faults.py [--trials 10 --num-blocks 2 --samples 4 --seq-len 32]

Last line: RESULT identical=N/T candidates_recomputed=C iterations_recomputed=I
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from selfhost import SelfHosted  # noqa: E402

FINAL = ("succeeded", "failed", "cancelled")


def wait(client: httpx.Client, job_id: str, until, timeout: float = 1800) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if until(job):
            return job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id}: {job}")


def picks(job: dict) -> list[tuple]:
    return [(r["block"], r["layer"], r["ppl"]) for r in job["removed"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--num-blocks", type=int, default=2)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--lease-s", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0, help="of the kill moments")
    ap.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--broker", default="redis://127.0.0.1:6379/13")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    body = {
        "model": "builtin:smollm2-135m",
        "calibration": "builtin:stdlib-docs",
        "num_blocks": args.num_blocks,
        "samples": args.samples,
        "seq_len": args.seq_len,
    }
    logs = Path(tempfile.mkdtemp(prefix="blockprune-bench-faults-"))
    timings = {
        "lease_s": str(args.lease_s),
        "heartbeat_s": str(args.lease_s / 4),
        "reaper_interval_s": "1",
        "progress_write_s": "0",  # every candidate's progress: what a kill loses is exact
        "max_attempts": str(args.trials + 5),
    }
    rows = []
    with SelfHosted(args.admin_dsn, args.broker, **timings) as stack:
        client = httpx.Client(base_url=stack.url, headers=stack.headers, timeout=30)
        worker = stack.start_worker(logs / "worker-0.log")
        started = time.monotonic()
        ref_id = client.post("/v1/jobs", json=body).json()["id"]
        ref = wait(client, ref_id, lambda j: j["status"] in FINAL)
        ref_s = time.monotonic() - started
        assert ref["status"] == "succeeded", ref
        print(f"reference: {ref_s:.1f} s, picks {picks(ref)}  (logs: {logs})")
        for trial in range(1, args.trials + 1):
            started = time.monotonic()
            job_id = client.post("/v1/jobs", json=body).json()["id"]
            wait(client, job_id, lambda j: j["status"] == "running")
            kill_at = rng.uniform(0.05, 0.9) * ref_s
            time.sleep(max(0.0, kill_at - (time.monotonic() - started)))
            before = client.get(f"/v1/jobs/{job_id}").json()
            stack.kill_worker(worker)
            worker = stack.start_worker(logs / f"worker-{trial}.log")
            job = wait(client, job_id, lambda j: j["status"] in FINAL)
            took = time.monotonic() - started
            events = client.get(f"/v1/jobs/{job_id}/events").json()["data"]
            committed = [e["data"]["iteration"] for e in events if e["kind"] == "iteration"]
            progress = before["progress"]
            in_flight = progress.get("scored") or 0 if before["phase"] == "searching" else 0
            rows.append(
                {
                    "trial": trial,
                    "kill_s": kill_at,
                    "phase": before["phase"] or before["status"],
                    "iteration": progress.get("iteration", 0),
                    "lost": in_flight,
                    "again": len(committed) - len(set(committed)),
                    "identical": job["status"] == "succeeded" and picks(job) == picks(ref),
                    "attempts": job["attempts"],
                    "extra_s": took - ref_s,
                }
            )
            r = rows[-1]
            print(
                f"trial {trial:>2}: killed at {r['kill_s']:5.1f} s ({r['phase']}, "
                f"{r['iteration']} iterations done, {r['lost']} candidates in flight) -> "
                f"{job['status']}, identical={r['identical']}, attempts={r['attempts']}, "
                f"+{r['extra_s']:.1f} s"
            )
    identical = sum(r["identical"] for r in rows)
    lost = sum(r["lost"] for r in rows)
    again = sum(r["again"] for r in rows)
    print(
        f"{identical}/{len(rows)} identical; {lost} candidates recomputed in all "
        f"(mean {lost / len(rows):.1f} per kill); {again} iterations committed twice; "
        f"mean time cost of a kill {sum(r['extra_s'] for r in rows) / len(rows):.1f} s "
        f"(lease {args.lease_s:.0f} s + a new worker's start + the model's load)"
    )
    print(
        f"RESULT identical={identical}/{len(rows)} candidates_recomputed={lost} "
        f"iterations_recomputed={again}"
    )


if __name__ == "__main__":
    main()
