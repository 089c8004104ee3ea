"""Exact vs racing search on SmolLM2-135M, side by side in one process: picks, PPLs and times.

Both run the engine's run_search on the same model, tokens, dtype, threads and sequence
chunks (racing's stages end on chunk boundaries, so both score 4 sequences per forward unless
--batch-size says otherwise): first the exact search, then the racing one (`--search racing`,
default margin). Each iteration prints both picks and PPLs, both times, and how many candidates
raced in each racing stage. A racing PPL is the full-set one, computed chunk by chunk as the
exact search computes it, so where the picks agree the PPLs are equal to the last bit.

    python bench/racing.py [--data ../shared/data/wikitext-2/valid.txt] [--iterations 4]
    python bench/racing.py --data builtin:stdlib-docs      # or a .txt, a .jsonl, pypi-readmes

`--data pypi-readmes` writes a .jsonl of the installed packages' descriptions (prose and code
in Markdown, unlike WikiText) and calibrates on it; the installed packages decide its rows, so
it changes with the environment. `--json PATH` saves the run, and a chart of
both searches' time per iteration beside it (PATH with .svg; `--replot PATH` redraws it).

Last line: RESULT picks_identical=true|false speedup_vs_exact=X.XX
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch

from contract import SearchState
from contract.racing import DEFAULT_RACE_MARGIN
from core.blocks import BlockModel
from core.calibration import load_calibration
from core.models import load_model
from core.plot import grouped_bars_svg
from core.search import SearchConfig, run_search

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/wikitext-2/valid.txt"


def pypi_readmes() -> str:
    """A .jsonl of the installed distributions' long descriptions, one row each."""
    rows = []
    for dist in sorted(metadata.distributions(), key=lambda d: d.metadata["Name"] or ""):
        body = dist.metadata.get_payload()  # type: ignore[attr-defined]
        if isinstance(body, str) and len(body) > 2000:
            rows.append(json.dumps({"text": body}))
    path = Path(tempfile.mkdtemp()) / "pypi-readmes.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def timed_search(bm: BlockModel, ids: torch.Tensor, config: SearchConfig):
    times: list[float] = []
    mark = time.perf_counter()

    def lap(_: SearchState) -> None:
        nonlocal mark
        now = time.perf_counter()
        times.append(now - mark)
        mark = now

    state = run_search(bm, ids, config, on_iteration=lap)
    return state, times


def plot(run: dict) -> str:
    """Seconds per iteration, exact against racing, with each racing stage's field."""
    groups = [
        (
            f"iteration {row['iteration']} ({' -> '.join(map(str, row['raced']))} raced)",
            {"exact": row["exact_s"], "racing": row["racing_s"]},
            ".1f",
        )
        for row in run["iterations"]
    ]
    total = {
        "exact": sum(row["exact_s"] for row in run["iterations"]),
        "racing": sum(row["racing_s"] for row in run["iterations"]),
    }
    title = (
        f"Seconds per iteration, exact vs racing search, {run['args']['data'].split('/')[-1]}: "
        f"{run['speedup']:.2f}x, picks identical: {all(r['same'] for r in run['iterations'])}"
    )
    return grouped_bars_svg(title, [*groups, ("total", total, ".1f")])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--block-types", default="mix")
    ap.add_argument("--race-slice", type=int, default=None)
    ap.add_argument("--race-margin", type=float, default=DEFAULT_RACE_MARGIN)
    ap.add_argument("--batch-size", type=int, default=None, help="both (default: racing's chunk)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--json", help="write the run here")
    ap.add_argument("--replot", help="only redraw the chart of a saved run")
    args = ap.parse_args()
    if args.replot:
        Path(args.replot).with_suffix(".svg").write_text(
            plot(json.loads(Path(args.replot).read_text()))
        )
        return
    torch.set_num_threads(args.threads)
    data = pypi_readmes() if args.data == "pypi-readmes" else args.data

    loaded = load_model(args.model)
    bm = BlockModel(loaded.model)
    ids = load_calibration(data, loaded.tokenizer, args.samples, args.seq_len).input_ids
    print(
        f"model {args.model}: {bm.num_layers} layers; calibration {args.samples} x "
        f"{args.seq_len} tokens from {args.data}; {args.block_types}, threads {args.threads}"
    )
    common = dict(num_blocks=args.iterations, block_types=args.block_types)
    racing_config = SearchConfig(
        **common,
        batch_size=args.batch_size,
        search="racing",
        race_slice=args.race_slice,
        race_margin=args.race_margin,
    )
    chunk = racing_config.chunk(len(ids))
    exact, exact_times = timed_search(bm, ids, SearchConfig(**common, batch_size=chunk))
    raced, race_times = timed_search(bm, ids, racing_config)

    ends = "/".join(str(s.sequences) for s in raced.races[0].stages)
    print(f"racing stages end at {ends} sequences, margin {args.race_margin}; batch {chunk}")
    header = ("it", "exact", "ppl", "s", "racing", "ppl", "s", "raced per stage", "same")
    print("{:>3} {:>7} {:>10} {:>6}  {:>7} {:>10} {:>6}  {:<16} {}".format(*header))
    rows = []
    for n, (e, r, te, tr, race) in enumerate(
        zip(exact.removed, raced.removed, exact_times, race_times, raced.races, strict=True), 1
    ):
        same = (e.kind, e.layer) == (r.kind, r.layer)
        sizes = " -> ".join(str(s.raced) for s in race.stages)
        print(
            f"{n:>3} {e.kind}.{e.layer:<3} {e.ppl:>10.4f} {te:>6.1f}  {r.kind}.{r.layer:<3} "
            f"{r.ppl:>10.4f} {tr:>6.1f}  {sizes:<16} {'yes' if same else 'NO'}"
        )
        rows.append(
            {
                "iteration": n,
                "exact": e.model_dump(),
                "racing": r.model_dump(),
                "exact_s": te,
                "racing_s": tr,
                "raced": [s.raced for s in race.stages],
                "work": race.work,
                "same": same,
            }
        )
    identical = all(row["same"] for row in rows)
    speedup = sum(exact_times) / sum(race_times)
    print(f"total: exact {sum(exact_times):.1f} s, racing {sum(race_times):.1f} s")
    if args.json:
        run = {"args": vars(args), "stages": ends, "iterations": rows, "speedup": speedup}
        Path(args.json).write_text(json.dumps(run, indent=1) + "\n")
        Path(args.json).with_suffix(".svg").write_text(plot(run))
    print(f"RESULT picks_identical={str(identical).lower()} speedup_vs_exact={speedup:.2f}")


if __name__ == "__main__":
    main()
