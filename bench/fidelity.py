"""How good is each method's pruned model? BlockPruner against the layer-pruning baselines
(ShortGPT, SLEB) on SmolLM2-135M, at about equal parameter cuts, on held-out text.

Calibration: the first SAMPLES x SEQ_LEN tokens of WikiText-2 valid. Evaluation: perplexity on
WikiText-2 test (disjoint windows of EVAL_SEQ_LEN tokens over its first EVAL_TOKENS tokens), the
same tokens for every model. Each method runs once, to the largest cut; a smaller cut is the
prefix of its removals that stays within that cut, which is exactly what a search with the
smaller `param_ratio` returns (the greedy steps are the same; tests/test_methods.py checks the
prefix rule). Layer methods remove a layer as its two blocks, so they reach only multiples of a
layer's size; the "blockpruner (same size)" rows give BlockPruner's prefix at the layer methods'
size (or the nearest below), for a comparison at equal parameters.

    python bench/fidelity.py [--samples 8 --seq-len 128 --cuts 0.1,0.2 --eval-tokens 32768]
    python bench/fidelity.py --matched-from bench/results/fidelity.json   # equal-size rows only

Writes bench/results/fidelity.json and fidelity.svg; last line:
RESULT best_at_<cut>=<method> ... (lowest test PPL at each cut)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from contract import Block, SearchState
from core.blocks import BlockModel
from core.calibration import load_calibration, read_tokens
from core.evaluation.perplexity import heldout_ppl
from core.export.inmemory import pruned_view
from core.methods import run_method
from core.models import load_model
from core.naive import full_pass_ppl
from core.plot import grouped_bars_svg
from core.report import format_table
from core.search import SearchConfig

DATA = Path(__file__).resolve().parents[2] / "shared/data/wikitext-2"
RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("blockpruner", "shortgpt", "sleb")


def prefix_within(bm: BlockModel, state: SearchState, method: str, cut: float) -> list[Block]:
    """The removals of `state` that a search with param_ratio=cut keeps: whole steps (a layer
    for a layer method) while the removed parameters stay within the cut."""
    blocks = state.removed_blocks
    size = 2 if method in ("shortgpt", "sleb") else 1
    total, kept, removed = bm.total_params(), [], 0
    for s in range(0, len(blocks), size):
        step = blocks[s : s + size]
        removed += sum(bm.block_params(b) for b in step)
        if removed / total > cut:
            break
        kept += step
    return kept


def matched_rows(loaded, bm: BlockModel, rows: list[dict], calib, test, seq_len: int) -> list[dict]:
    """BlockPruner at the size each layer method reached, or the nearest below (its steps are
    finer: a prefix of its removals): the comparison at equal parameters, not equal targets."""
    longest = max((r for r in rows if r["method"] == "blockpruner"), key=lambda r: r["cut"])
    order = [Block(kind, int(layer)) for kind, layer in (n.split(".") for n in longest["removed"])]
    out = []
    sizes = {(r["cut"], r["params_removed"]) for r in rows if r["method"] in ("shortgpt", "sleb")}
    for cut, target in sorted(sizes):
        blocks, removed = [], 0
        for b in order:
            if (removed + bm.block_params(b)) / bm.total_params() > target + 1e-12:
                break
            blocks.append(b)
            removed += bm.block_params(b)
        with pruned_view(loaded.model, blocks) as pruned:
            result = heldout_ppl(pruned, test, seq_len)
        out.append(
            {
                "method": "blockpruner (same size)",
                "cut": cut,
                "removed": [str(b) for b in blocks],
                "params_removed": removed / bm.total_params(),
                "calibration_ppl": full_pass_ppl(bm, calib, blocks),
                "test_ppl": result.ppl,
                "search_s": longest["search_s"],
            }
        )
    return out


def search_rows(args, loaded, bm: BlockModel, calib, test, cuts: list[float]):
    """Each method's search to the largest cut, and its test PPL at every cut."""
    dense = heldout_ppl(loaded.model, test, args.eval_seq_len)
    rows: list[dict] = [
        {
            "method": "dense",
            "cut": 0.0,
            "removed": [],
            "params_removed": 0.0,
            "calibration_ppl": None,
            "test_ppl": dense.ppl,
            "search_s": 0.0,
        }  # fmt: skip
    ]
    for method in args.methods.split(","):
        t0 = time.time()

        def progress(state: SearchState, method: str = method, t0: float = t0) -> None:
            last, took = state.removed[-1], time.time() - t0
            print(f"  {method}: {state.blocks_removed} blocks, removed {last}, "
                  f"calibration ppl {last.ppl:.3f} ({took:.0f} s)", flush=True)  # fmt: skip

        config = SearchConfig(method=method, param_ratio=max(cuts), batch_size=args.batch_size)
        state = run_method(bm, calib, config, on_iteration=progress)
        search_s = time.time() - t0
        ppl_after = {b.ref: b.ppl for b in state.removed}
        for cut in cuts:
            blocks = prefix_within(bm, state, method, cut)
            with pruned_view(loaded.model, blocks) as pruned:
                result = heldout_ppl(pruned, test, args.eval_seq_len)
            removed_params = sum(bm.block_params(b) for b in blocks) / bm.total_params()
            last = (blocks[-1].kind, blocks[-1].layer) if blocks else None
            rows.append(
                {
                    "method": method,
                    "cut": cut,
                    "removed": [str(b) for b in blocks],
                    "params_removed": removed_params,
                    "calibration_ppl": ppl_after[last] if last else state.base_ppl,
                    "test_ppl": result.ppl,
                    "search_s": search_s,
                }
            )
            print(f"  {method} <= {cut:.0%}: {len(blocks)} blocks, {removed_params:.1%} of the "
                  f"parameters, test ppl {result.ppl:.3f}", flush=True)  # fmt: skip
    return rows, dense.ppl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--cuts", default="0.1,0.2")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--eval-tokens", type=int, default=32768)
    parser.add_argument("--eval-seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--matched-from",
        type=Path,
        help="add only the equal-size BlockPruner rows to this earlier fidelity.json",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cuts = [float(c) for c in args.cuts.split(",")]
    started = time.time()

    loaded = load_model("builtin:smollm2-135m", "cpu", "float32")
    bm = BlockModel(loaded.model)
    calib = load_calibration(
        str(args.data / "valid.txt"), loaded.tokenizer, args.samples, args.seq_len
    ).input_ids
    _, test_ids, _, _ = read_tokens(str(args.data / "test.txt"), loaded.tokenizer, None)
    test = torch.tensor(test_ids[: args.eval_tokens], dtype=torch.long)
    print(f"calibration {args.samples} x {args.seq_len} tokens of valid.txt; evaluation "
          f"{len(test):,} of {len(test_ids):,} test.txt tokens", flush=True)  # fmt: skip

    if args.matched_from is not None:  # the searches' rows from an earlier run
        earlier = json.loads(args.matched_from.read_text())
        rows = [r for r in earlier["rows"] if not r["method"].endswith("(same size)")]
        dense_ppl, searched_s = earlier["dense_test_ppl"], earlier["seconds"]
    else:
        rows, dense_ppl = search_rows(args, loaded, bm, calib, test, cuts)
        searched_s = 0.0
    if {"blockpruner"} < {r["method"] for r in rows} - {"dense"}:
        rows += matched_rows(loaded, bm, rows, calib, test, args.eval_seq_len)

    table = [("method", "cut", "blocks", "params removed", "calib ppl", "test ppl", "search s")]
    for r in rows:
        table.append(
            (
                r["method"],
                f"<= {r['cut']:.0%}" if r["cut"] else "-",
                str(len(r["removed"])),
                f"{r['params_removed']:.1%}",
                f"{r['calibration_ppl']:.3f}" if r["calibration_ppl"] else "-",
                f"{r['test_ppl']:.3f}",
                f"{r['search_s']:.0f}",
            )
        )
    print(format_table(table))
    total_s = time.time() - started + searched_s  # with the earlier run's, when rescored
    print(f"total time: {total_s:.0f} s")

    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) for k, v in vars(args).items()}
    record = {"settings": settings, "rows": rows, "dense_test_ppl": dense_ppl,
              "eval_tokens": len(test), "seconds": total_s}  # fmt: skip
    (args.out / "fidelity.json").write_text(json.dumps(record, indent=1) + "\n")
    groups = [
        (
            f"cut <= {cut:.0%}: test PPL (lower is better)",
            {"dense": dense_ppl, **{r["method"]: r["test_ppl"] for r in rows if r["cut"] == cut}},
            ".2f",
        )
        for cut in cuts
    ]
    svg = grouped_bars_svg("SmolLM2-135M on WikiText-2 test, by pruning method", groups)
    (args.out / "fidelity.svg").write_text(svg)
    best = {
        cut: min((r for r in rows if r["cut"] == cut), key=lambda r: r["test_ppl"])["method"]
        for cut in cuts
    }
    print("RESULT " + " ".join(f"best_at_{cut:g}={m}" for cut, m in best.items()))


if __name__ == "__main__":
    main()
