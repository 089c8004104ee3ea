"""Peak memory and time per iteration of a search at several cache budgets, against the planner.

Each budget runs in a fresh process (a peak cannot be un-reached), one after the other, so the
rows are measured in one run of this script. The peak is measured, not computed:
  * CPU: the process's resident high-water mark (VmHWM) less its resident memory before the
    model was loaded. By default (--allocator live) glibc is told to hand large freed blocks
    back (MALLOC_MMAP_THRESHOLD_), so resident memory follows the live tensors, which is what
    the planner computes; --allocator default shows what glibc's own caching adds on top.
  * CUDA: torch.cuda.max_memory_allocated; the planner's figure less its CUDA context, which
    the allocator does not count.
The planned peak is contract.memory's, as `blockprune plan` prints it.

    python bench/memory.py [--samples 16 --seq-len 128 --iterations 2 --device cpu] [--json]

Last line: RESULT max_plan_error=X.X% (planned vs measured peak, worst budget)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = ("all+held", "all", "1/4", "one position", "none")


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _budget(name: str, plan) -> int | None:
    kept = len(plan.layout.kept)
    return {
        "all+held": None,
        "all": plan.cache,
        "1/4": plan.position * (kept // 4),
        "one position": plan.position,
        "none": 0,
    }[name]


def child(args: argparse.Namespace) -> dict:
    """One budget: load, search `iterations` iterations, report the peak and the times."""
    import torch

    from contract import JobSpec
    from contract.memory import plan_search
    from core.models import resolve_model_dir
    from core.pipeline import prepare_job
    from core.planner import read_shape
    from core.search import run_search

    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    spec = JobSpec(
        model=args.model,
        calibration=args.data,
        num_blocks=args.iterations,
        samples=args.samples,
        seq_len=args.seq_len,
        dtype=args.dtype,
    )
    shape = read_shape(resolve_model_dir(spec.model)[1])
    full = plan_search(shape, spec.samples, spec.seq_len, spec.dtype)
    budget = _budget(args.child, full)
    spec = spec.model_copy(update={"cache_budget": budget})
    before = _rss("VmRSS")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    prepared = prepare_job(spec, device=args.device)
    if not cuda:
        Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts here
    times: list[float] = []
    mark = time.perf_counter()

    def on_iteration(_state) -> None:
        nonlocal mark
        times.append(time.perf_counter() - mark)
        mark = time.perf_counter()

    run_search(
        prepared.bm, prepared.input_ids, prepared.search_config(spec), on_iteration=on_iteration
    )
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = _rss("VmHWM") - before
    plan = prepared.plan
    return {
        "budget": args.child,
        "bytes": budget,
        "kept": len(plan.layout.kept),
        "planned_peak": plan.peak - (plan.runtime if cuda else 0),
        "measured_peak": peak,
        "s_per_iteration": min(times),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--data", default="builtin:stdlib-docs")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--budgets", default=",".join(BUDGETS))
    ap.add_argument("--allocator", choices=("live", "default"), default="live")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON lines too")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    from contract.memory import human
    from core.cli import print_table

    print(
        f"{args.model} on {args.device}, {args.samples} x {args.seq_len} tokens, {args.dtype}, "
        f"{args.iterations} iterations per budget, {args.threads} threads, "
        f"{args.allocator} allocator"
    )
    rows = []
    for name in args.budgets.split(","):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--child", name]
        env = dict(os.environ)
        if args.allocator == "live":
            env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        if out.returncode:
            sys.exit(f"budget {name} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    header = ("budget", "bytes", "kept", "planned peak", "measured peak", "error", "s/iteration")
    table = [header]
    for r in rows:
        error = r["planned_peak"] / r["measured_peak"] - 1
        r["error"] = error
        table.append(
            (
                r["budget"],
                "unlimited" if r["bytes"] is None else human(r["bytes"]),
                str(r["kept"]),
                human(r["planned_peak"]),
                human(r["measured_peak"]),
                f"{100 * error:+.1f}%",
                f"{r['s_per_iteration']:.1f}",
            )
        )
    print_table(table)
    if args.json:
        for r in rows:
            print(json.dumps(r))
    print(f"RESULT max_plan_error={100 * max(abs(r['error']) for r in rows):.1f}%")


if __name__ == "__main__":
    main()
