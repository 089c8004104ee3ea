"""Engine vs plain greedy BlockPruner search on SmolLM2-135M, side by side in one process.

The two alternate candidate by candidate: right after the engine scores a candidate (reported
through its progress callback), the plain search scores the same candidate with a full forward
pass from the embeddings, against its own removed blocks. Same batch, dtype and threads, and
load on the machine hits both alike. Times: the engine's include its base pass and bookkeeping;
the plain search's are its full passes only.

    python bench/search_speed.py [--data ../shared/data/wikitext-2/valid.txt] [--iterations 3]

Last line: RESULT picks_identical=true|false speedup=X.XX
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from contract import Block, Progress, SearchState
from core.blocks import BlockModel
from core.calibration import load_calibration
from core.models import load_model
from core.naive import full_pass_ppl
from core.search import SearchConfig, run_search

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/wikitext-2/valid.txt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=None, help="sequences per forward (all)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_model(args.model)
    bm = BlockModel(loaded.model)
    ids = load_calibration(args.data, loaded.tokenizer, args.samples, args.seq_len).input_ids
    print(
        f"model {args.model}: {bm.num_layers} layers, {bm.total_params():,} params; "
        f"calibration {args.samples} x {args.seq_len} tokens from {args.data}; "
        f"threads {args.threads}, batch {args.batch_size or args.samples}, float32"
    )

    plain_removed: list[Block] = []
    plain_scores: list[tuple[float, Block]] = []
    rows: list[tuple[int, str, float, float, str, float, float]] = []
    engine_time = plain_time = plain_iter_time = 0.0
    mark = iter_start = time.perf_counter()

    def after_candidate(p: Progress) -> None:
        """Runs right after the engine scored p.last_block: the plain search scores it too."""
        nonlocal mark, engine_time, plain_time, plain_iter_time
        engine_time += time.perf_counter() - mark
        assert p.last_block is not None
        block = p.last_block
        t0 = time.perf_counter()
        plain_scores.append(
            (full_pass_ppl(bm, ids, plain_removed + [block], args.batch_size), block)
        )
        elapsed = time.perf_counter() - t0
        plain_time += elapsed
        plain_iter_time += elapsed
        mark = time.perf_counter()

    def after_iteration(state: SearchState) -> None:
        nonlocal mark, engine_time, plain_iter_time, iter_start
        engine_time += time.perf_counter() - mark
        ppl, block = min(plain_scores, key=lambda s: s[0])  # first of equal PPLs, as the paper
        plain_removed.append(block)
        plain_scores.clear()
        e = state.removed[-1]
        total = time.perf_counter() - iter_start
        t_engine = total - plain_iter_time
        rows.append(
            (
                len(rows) + 1,
                str(e),
                e.ppl,
                t_engine,
                str(block),
                ppl,
                plain_iter_time,
            )
        )
        print(
            f"iteration {len(rows)}: engine {t_engine:.1f} s, plain {plain_iter_time:.1f} s",
            flush=True,
        )
        plain_iter_time = 0.0
        mark = iter_start = time.perf_counter()

    state = run_search(
        bm,
        ids,
        SearchConfig(num_blocks=args.iterations, batch_size=args.batch_size),
        on_progress=after_candidate,
        on_iteration=after_iteration,
    )

    print()
    print("| iter | engine pick | engine PPL | engine s | plain pick | plain PPL | plain s |")
    print("|-----:|------------|-----------:|---------:|-----------|----------:|--------:|")
    for n, eb, ep, et, pb, pp, pt in rows:
        print(f"| {n} | {eb} | {ep:.6f} | {et:.1f} | {pb} | {pp:.6f} | {pt:.1f} |")
    identical = all(r[1] == r[4] and r[2] == r[5] for r in rows)
    speedup = plain_time / engine_time
    print(f"| total | | base PPL {state.base_ppl:.6f} | {engine_time:.1f} | | | {plain_time:.1f} |")
    print(f"RESULT picks_identical={str(identical).lower()} speedup={speedup:.2f}")


if __name__ == "__main__":
    main()
