"""The API's cold start: time to import `api.app` and build the app, and the process's peak
memory, each in a fresh interpreter. With `--before DIR` (another checkout, e.g. a git worktree
of an older commit) both trees are measured in turn, run by run, so load on the machine hits
both alike.

    python bench/api_coldstart.py --runs 7 --before /tmp/blockprune-before
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

PROBE = """
import json, resource, sys, time
t = time.perf_counter()
import api.app
api.app.create_app()
seconds = time.perf_counter() - t
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "peak_mib": peak_mib, "torch": "torch" in sys.modules,
                  "modules": len(sys.modules)}))
"""


def measure(tree: Path) -> dict:
    run = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=tree,
        env={"PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--before", type=Path, help="another checkout to compare with")
    args = parser.parse_args()
    trees = {"now": Path(__file__).resolve().parents[1]}
    if args.before:
        trees = {"before": args.before.resolve(), **trees}
    results: dict[str, list[dict]] = {name: [] for name in trees}
    for _ in range(args.runs):
        for name, tree in trees.items():
            results[name].append(measure(tree))
    print("| tree | import + create_app s (median) | peak MiB (median) | torch loaded | modules |")
    print("|---|---:|---:|---|---:|")
    medians = {}
    for name, runs in results.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        peak = statistics.median(r["peak_mib"] for r in runs)
        medians[name] = (seconds, peak)
        print(
            f"| {name} | {seconds:.2f} | {peak:.0f} | {runs[0]['torch']} | {runs[0]['modules']} |"
        )
    if "before" in medians:
        (s0, m0), (s1, m1) = medians["before"], medians["now"]
        print(f"RESULT speedup={s0 / s1:.2f} memory_ratio={m0 / m1:.2f}")


if __name__ == "__main__":
    main()
