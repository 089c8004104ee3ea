"""Fairness of the queue: four tenants, bursts and mixed parallelism on two workers, with the
queue as one FIFO and with its priorities (service.fairness), side by side.

On a stack of its own per mode (bench/selfhost.py), two workers running, it submits:
  - tenant A: a burst of `--burst` jobs at parallelism 1, at t = 0;
  - tenant B: 4 jobs at parallelism 2, at t = 0.5 s;
  - tenant C: 2 jobs at parallelism 1 and 2 at parallelism 2, at t = 1 s;
  - tenant D: 1 job at parallelism 1, at t = 1.5 s;
each a job on a small random Llama (`--layers` layers, character tokenizer, in the stack's S3)
of `--num-blocks` blocks on `--samples` x `--seq-len` tokens of the stdlib docs: a few seconds
each, so that what is measured is the queue, not the model. Per tenant
it prints the queue wait (submit to first start) and the time to done (submit to finished), mean
and max, and for the jobs at parallelism 2 the fan-out makespan (first start to finished).

    python bench/fairness.py [--burst 20 --layers 8 --num-blocks 4 --samples 8 --seq-len 64]

Last line: RESULT, the fair mode's figures over the FIFO's (below 1: shorter): the one job of
tenant D's wait, the small tenants' (B, C, D) mean wait, the fan-out makespan, and the burst's
last job's time to done (which fairness lengthens: it yields to the others).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from statistics import mean

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from faults import FINAL  # noqa: E402
from selfhost import SelfHosted  # noqa: E402

# tenant -> (seconds after the burst, [parallelism of each job])
WORKLOAD = {"B": (0.5, [2] * 4), "C": (1.0, [1, 1, 2, 2]), "D": (1.5, [1])}


def seconds(a: str, b: str) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def small_model(out: Path, layers: int) -> Path:
    """A random Llama over a character vocabulary, with its tokenizer, saved to `out`."""
    import string

    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{c: i + 1 for i, c in enumerate(string.printable[:96])}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>").save_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def upload_inputs(stack: SelfHosted, model: Path) -> dict[str, str]:
    from pydoc_data.topics import topics

    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=stack.env["BLOCKPRUNE_S3_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )
    for path in sorted(model.iterdir()):
        s3.upload_file(str(path), "bench", f"models/small/{path.name}")
    text = "\n\n".join(topics[k] for k in sorted(topics)).encode()
    s3.put_object(Bucket="bench", Key="calibration/docs.txt", Body=text)
    return {"model": "s3://bench/models/small/", "calibration": "s3://bench/calibration/docs.txt"}


def run(
    mode: str, args: argparse.Namespace, logs: Path, model: Path
) -> dict[str, dict[str, float]]:
    settings = {"queue_fairness": "true" if mode == "fair" else "false"}
    settings |= {"tenant_max_active_jobs": "1000", "reaper_interval_s": "1"}
    settings |= {"s3_shared_prefixes": "models/,calibration/"}
    plan = {"A": (0.0, [1] * args.burst), **WORKLOAD}
    with SelfHosted(args.admin_dsn, args.broker, **settings) as stack:
        body = {
            **upload_inputs(stack, model),
            "num_blocks": args.num_blocks,
            "samples": args.samples,
            "seq_len": args.seq_len,
        }
        keys = {
            t: stack.cli("keys", "create", "--tenant", t).strip().splitlines()[-1] for t in plan
        }
        clients = {
            t: httpx.Client(
                base_url=stack.url, headers={"Authorization": f"Bearer {k}"}, timeout=30
            )
            for t, k in keys.items()
        }
        for w in range(2):
            stack.start_worker(logs / f"{mode}-worker-{w}.log", OMP_NUM_THREADS="1")
        time.sleep(args.warmup_s)  # the workers' start (torch, transformers)
        began, jobs = time.monotonic(), []
        for tenant, (at, parallelisms) in sorted(plan.items(), key=lambda kv: kv[1][0]):
            time.sleep(max(0.0, at - (time.monotonic() - began)))
            for p in parallelisms:
                answer = clients[tenant].post("/v1/jobs", json={**body, "parallelism": p})
                answer.raise_for_status()
                jobs.append((tenant, answer.json()["id"]))
        done: dict[str, dict] = {}
        while len(done) < len(jobs):
            for tenant, job_id in jobs:
                if job_id not in done:
                    job = clients[tenant].get(f"/v1/jobs/{job_id}").json()
                    if job["status"] in FINAL:
                        assert job["status"] == "succeeded", job
                        done[job_id] = job
            time.sleep(0.5)
        took = time.monotonic() - began
    figures: dict[str, dict[str, float]] = {}
    for tenant in plan:
        mine = [done[j] for t, j in jobs if t == tenant]
        waits = [seconds(j["created_at"], j["started_at"]) for j in mine]
        ends = [seconds(j["created_at"], j["finished_at"]) for j in mine]
        spans = [seconds(j["started_at"], j["finished_at"]) for j in mine if j["parallelism"] > 1]
        figures[tenant] = {
            "wait_mean": mean(waits),
            "wait_max": max(waits),
            "done_mean": mean(ends),
            "done_max": max(ends),
            "fanout_makespan": mean(spans) if spans else float("nan"),
        }
    print(f"\n{mode}: {len(jobs)} jobs in {took:.0f} s (logs: {logs})")
    print("tenant  jobs  wait mean  wait max  done mean  done max  fan-out makespan")
    for tenant, f in figures.items():
        n = len(plan[tenant][1])
        print(
            f"{tenant:>6}  {n:>4}  {f['wait_mean']:8.1f}s  {f['wait_max']:7.1f}s  "
            f"{f['done_mean']:8.1f}s  {f['done_max']:7.1f}s  {f['fanout_makespan']:14.1f}s"
        )
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--burst", type=int, default=20)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--num-blocks", type=int, default=4)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--warmup-s", type=float, default=20.0)
    ap.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--broker", default="redis://127.0.0.1:6379/13")
    args = ap.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="blockprune-bench-fairness-"))
    model = small_model(logs / "model", args.layers)
    fifo, fair = run("fifo", args, logs, model), run("fair", args, logs, model)
    ratio = {
        "single_job_wait": fair["D"]["wait_max"] / fifo["D"]["wait_max"],
        "small_tenants_wait_mean": mean(fair[t]["wait_mean"] for t in WORKLOAD)
        / mean(fifo[t]["wait_mean"] for t in WORKLOAD),
        "fanout_makespan": mean(fair[t]["fanout_makespan"] for t in ("B", "C"))
        / mean(fifo[t]["fanout_makespan"] for t in ("B", "C")),
        "burst_done_max": fair["A"]["done_max"] / fifo["A"]["done_max"],
    }
    print("\nRESULT " + " ".join(f"{k}={v:.2f}" for k, v in ratio.items()))


if __name__ == "__main__":
    main()
