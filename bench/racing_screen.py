"""Racing's screen on heavy tails: which drop rule keeps the exact winner, and at what work.

For each text, the exact search's first iterations are run once with every candidate's NLL on
every calibration sequence kept (the matrix racing sees, stage by stage). Each rule is then
replayed on those matrices: the stages' survivors, whether the exact pick survives every stage
(racing then picks it, with the exact PPL), and the candidate-sequence passes as a fraction of
the exact search's. A replay decides from the exact search's removed blocks, as `--verify`
checks each of racing's decisions from racing's own.

    python bench/racing_screen.py [--texts valid,test,stdlib-docs,pypi-readmes,pypi-readmes:1]
        [--iterations 4] [--json bench/results/racing-screen.json]

`pypi-readmes:S` is the installed packages' descriptions (bench/racing.py) with rows shuffled
by seed S. `--replay PATH` replays a saved run's matrices without the model.

Last line: RESULT <rule>=<picks kept>/<decisions>:<work> ...
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from racing import DEFAULT_DATA, pypi_readmes

from contract.racing import (
    DEFAULT_RACE_MARGIN,
    paired_difference,
    race_stages,
    race_work,
    survivors,
)
from core.activations import ActivationCache, ppl_from_nlls
from core.blocks import BlockModel
from core.calibration import load_calibration
from core.models import load_model
from core.search import block_units

TEXTS = {
    "valid": str(DEFAULT_DATA),
    "test": str(DEFAULT_DATA.with_name("test.txt")),
    "stdlib-docs": "builtin:stdlib-docs",
}


def _rule(kind: str, margin: float):
    """The cut with a candidate's own spread ("sd"), t quantiles for its n - 1 degrees of
    freedom at the normal margin's tail ("t"), or the larger of its own and the pooled spread
    ("pooled", as contract.racing.survivors)."""
    from scipy.stats import norm, t

    def keep(nlls, total):
        n = len(nlls[0])
        means = [math.fsum(r) / n for r in nlls]
        leader = min(range(len(nlls)), key=lambda i: (means[i], i))
        paired = [paired_difference(row, nlls[leader]) for row in nlls]
        scale = math.sqrt((total - n) / (total * n))
        others = [s for i, (_, s) in enumerate(paired) if i != leader]
        pooled = math.sqrt(math.fsum(s * s for s in others) / max(len(others), 1))
        m = t.ppf(norm.cdf(margin), n - 1) if kind == "t" else margin
        return [
            i
            for i, (d, s) in enumerate(paired)
            if i == leader or d <= m * (max(s, pooled) if kind == "pooled" else s) * scale
        ]

    return keep


RULES = {
    "own spread, margin 3 (before)": _rule("sd", 3.0),
    "own spread, margin 4": _rule("sd", 4.0),
    "own spread, margin 5": _rule("sd", 5.0),
    "t quantiles, margin 2.5": _rule("t", 2.5),
    "t quantiles, margin 3": _rule("t", 3.0),
    "pooled spread, margin 2": _rule("pooled", 2.0),
    "pooled spread, margin 2.5": _rule("pooled", 2.5),
    "pooled spread, margin 3": _rule("pooled", 3.0),
    "own spread, margin 3, first slice 8": _rule("sd", 3.0),
    "pooled spread, margin 2, first slice 8": _rule("pooled", 2.0),
    "pooled spread, margin 3, first slice 8": _rule("pooled", 3.0),
    f"pooled spread, margin {DEFAULT_RACE_MARGIN:g} (now)": lambda nlls, total: survivors(
        nlls, total, DEFAULT_RACE_MARGIN
    ),
}


def matrices(bm: BlockModel, ids: torch.Tensor, iterations: int, chunk: int) -> list[dict]:
    """Each exact iteration: the candidates (in order) and their NLL on every sequence."""
    removed: list = []
    out = []
    for _ in range(iterations):
        cache = ActivationCache(bm, ids, chunk)
        cache.build(removed)
        units = [u for u in block_units(bm, "mix") if u[0] not in removed]
        nlls = [cache.sequence_nlls(u)[0].double().tolist() for u in units]
        ppls = [ppl_from_nlls(torch.tensor(row)) for row in nlls]
        best = min(range(len(units)), key=lambda i: (ppls[i], i))
        out.append({"candidates": [str(u[0]) for u in units], "nlls": nlls, "pick": best})
        removed.append(units[best][0])
        print(
            f"  iteration {len(out)}: exact pick {units[best][0]} ppl {ppls[best]:.4f}", flush=True
        )
    return out


def replay(rule, iteration: dict, stages: list[int], order: list[int]) -> tuple[bool, float, float]:
    """(the exact pick survives every stage, work as a fraction of the exact iteration's, the
    racing pick's full-set PPL over the exact pick's, minus 1), with the sequences met in
    `order`."""
    nlls = [[row[j] for j in order] for row in iteration["nlls"]]
    racing = list(range(len(nlls)))
    raced = []
    for end in stages:
        raced.append(len(racing))
        seen = [nlls[i][:end] for i in racing]
        racing = [racing[i] for i in rule(seen, stages[-1])]
    full = [math.fsum(row) / len(row) for row in iteration["nlls"]]
    pick = min(racing, key=lambda i: (full[i], i))
    regret = math.exp(full[pick] - full[iteration["pick"]]) - 1
    return iteration["pick"] in racing, race_work(raced, stages), regret


def orders(samples: int, permutations: int) -> list[list[int]]:
    """The calibration order, then `permutations` shuffles of it (seeded): each is a run whose
    first slices hold other sequences, with the same exact pick."""
    rng = random.Random(0)
    out = [list(range(samples))]
    for _ in range(permutations):
        out.append(rng.sample(range(samples), samples))
    return out


def report(runs: dict[str, list[dict]], stages: list[int], permutations: int) -> None:
    """Per rule: the decisions in calibration order that keep the exact pick (and which miss),
    then the share kept over every order, and the mean work."""
    print(f"\nstages end at {'/'.join(map(str, stages))} sequences; {permutations} shuffles")
    print(
        f"{'rule':<40} {'kept':>7} {'shuffled':>9} {'work':>6} {'mean +PPL':>10} {'max +PPL':>9}"
        "  misses in calibration order"
    )
    summary = []
    for name, rule in RULES.items():
        kept, shuffled, tries, works, misses, regrets = 0, 0, 0, [], [], []
        for text, iterations in runs.items():
            for n, it in enumerate(iterations, 1):
                for k, order in enumerate(orders(stages[-1], permutations)):
                    ends = [8, 16] if "first slice 8" in name else stages
                    ok, work, regret = replay(rule, it, ends, order)
                    works.append(work)
                    regrets.append(regret)
                    if k == 0:
                        kept += ok
                        misses += [] if ok else [f"{text}#{n}"]
                    else:
                        shuffled += ok
                        tries += 1
        total = sum(len(its) for its in runs.values())
        mean = sum(works) / len(works)
        share = shuffled / tries if tries else 1.0
        print(
            f"{name:<40} {kept:>3}/{total:<3} {share:>9.2%} {mean:>6.0%} "
            f"{sum(regrets) / len(regrets):>10.3%} {max(regrets):>9.2%}  {' '.join(misses)}"
        )
        label = name.split(" (")[0].replace(", margin ", "").replace(", first slice ", "/")
        label = label.replace(" ", "_")
        summary.append(f"{label}={kept}/{total}:{share:.4f}:{mean:.2f}")
    print("RESULT " + " ".join(summary))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", default="valid,test,stdlib-docs,pypi-readmes,pypi-readmes:1")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=Path("bench/results/racing-screen.json"))
    ap.add_argument("--replay", type=Path, help="replay a saved run's matrices")
    ap.add_argument("--permutations", type=int, default=200, help="shuffled orders per decision")
    args = ap.parse_args()
    stages = race_stages(args.samples, None, None)
    if args.replay:
        report(json.loads(args.replay.read_text())["runs"], stages, args.permutations)
        return
    torch.set_num_threads(args.threads)
    loaded = load_model("builtin:smollm2-135m")
    bm = BlockModel(loaded.model)
    saved = json.loads(args.json.read_text()) if args.json.exists() else {"runs": {}}
    for text in args.texts.split(","):
        if text in saved["runs"]:
            continue  # resumable: one text at a time
        name, _, seed = text.partition(":")
        source = pypi_readmes() if name == "pypi-readmes" else TEXTS[name]
        ids = load_calibration(source, loaded.tokenizer, args.samples, args.seq_len, int(seed or 0))
        print(f"{text}: {args.samples} x {args.seq_len} tokens", flush=True)
        t0 = time.time()
        saved["runs"][text] = matrices(bm, ids.input_ids, args.iterations, stages[0])
        print(f"  {time.time() - t0:.0f} s", flush=True)
        args.json.write_text(json.dumps(saved) + "\n")
    report(saved["runs"], stages, args.permutations)


if __name__ == "__main__":
    main()
