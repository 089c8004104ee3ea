"""The engine's commands: `blockprune prune` and `blockprune ppl`, run in-process, no services."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from core.blocks import BLOCK_TYPES
from core.errors import UserError
from core.pipeline import DEVICES, DTYPES, PruneSpec

DEFAULT_NUM_BLOCKS = 4


def add_engine_commands(sub: argparse._SubParsersAction) -> None:
    defaults = PruneSpec()
    p = sub.add_parser("prune", help="prune a model with BlockPruner's greedy search")
    p.add_argument("--model", default=defaults.model, help="PATH | builtin:smollm2-135m | hf:ID")
    p.add_argument(
        "--calibration",
        default=defaults.calibration,
        help="file.txt | file.jsonl | builtin:stdlib-docs | hf:wikitext2 | hf:alpaca",
    )
    target = p.add_mutually_exclusive_group()
    target.add_argument(
        "--num-blocks", type=int, help=f"blocks to remove (default {DEFAULT_NUM_BLOCKS})"
    )
    target.add_argument("--param-ratio", type=float, help="fraction of parameters to remove")
    p.add_argument("--output", help="export directory (default pruned/<model>-<N>blocks)")
    p.add_argument("--block-types", choices=BLOCK_TYPES, default=defaults.block_types)
    p.add_argument("--samples", type=int, default=defaults.samples)
    p.add_argument("--seq-len", type=int, default=defaults.seq_len)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--device", choices=DEVICES, default=defaults.device)
    p.add_argument("--dtype", choices=DTYPES, default=defaults.dtype)
    p.add_argument("--batch-size", type=int, help="sequences per forward (default: all)")
    p.add_argument("--text-field", default=defaults.text_field, help="text field of a .jsonl")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT's saved state")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    p.set_defaults(func=cmd_prune)

    q = sub.add_parser("ppl", help="perplexity of a model (also an exported pruned DIR)")
    q.add_argument("--model", default=defaults.model)
    q.add_argument("--data", default=defaults.calibration)
    q.add_argument("--samples", type=int, default=defaults.samples)
    q.add_argument("--seq-len", type=int, default=defaults.seq_len)
    q.add_argument("--seed", type=int, default=defaults.seed)
    q.add_argument("--device", choices=DEVICES, default=defaults.device)
    q.add_argument("--dtype", choices=DTYPES, default=defaults.dtype)
    q.set_defaults(func=cmd_ppl)


def _quiet_transformers() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _state_path(output: Path) -> Path:
    return output.with_name(output.name + ".search-state.json")


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def cmd_prune(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from core.pipeline import run_prune

    _quiet_transformers()
    num_blocks = args.num_blocks
    if num_blocks is None and args.param_ratio is None:
        num_blocks = DEFAULT_NUM_BLOCKS
    spec = PruneSpec(
        model=args.model,
        calibration=args.calibration,
        num_blocks=num_blocks,
        param_ratio=args.param_ratio,
        block_types=args.block_types,
        samples=args.samples,
        seq_len=args.seq_len,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        text_field=args.text_field,
    )
    spec.validate()
    name = args.model.split(":")[-1].rstrip("/").split("/")[-1] or "model"
    target = f"{num_blocks}blocks" if num_blocks else f"ratio{args.param_ratio}"
    output = Path(args.output or f"pruned/{name}-{args.block_types}-{target}")
    state_file = _state_path(output)
    state = None
    if args.resume and state_file.exists():
        state = json.loads(state_file.read_text())
        print(f"resuming after {state['iteration']} removed blocks from {state_file}")
    elif args.resume:
        print(f"no saved state at {state_file}; starting a new search")
    if output.exists() and any(output.iterdir()) and not args.overwrite:
        raise UserError(
            "output", f"{output} exists and is not empty; use --overwrite or another --output"
        )
    output.parent.mkdir(parents=True, exist_ok=True)

    bar = tqdm(total=0, unit="cand", dynamic_ncols=True, disable=None)
    started = time.time()

    def on_phase(phase: str) -> None:
        bar.set_description(phase)

    def on_progress(p: dict) -> None:
        if p["scored"] == 1 and p["total_iterations"] is None:  # ratio target: grow as we go
            bar.total = (bar.total or 0) + p["total_candidates"]
        elif not bar.total:  # all candidates of all remaining iterations, so ETA is the job's
            left = p["total_iterations"] - p["iteration"]
            bar.total = sum(p["total_candidates"] - k for k in range(left))
        total = p["total_iterations"] or "?"
        bar.set_description(f"iteration {p['iteration'] + 1}/{total}")
        bar.set_postfix_str(
            f"best ppl {p['best_ppl']:.3f} ({p['best_block']['block']}.{p['best_block']['layer']})"
        )
        bar.update(1)

    def on_iteration(state: dict) -> None:
        _write_json_atomic(state_file, state)
        last = state["removed"][-1]
        bar.write(f"removed {last['block']}.{last['layer']}: ppl {last['ppl']:.3f}")

    result = run_prune(
        spec,
        output,
        state=state,
        overwrite=args.overwrite,
        on_phase=on_phase,
        on_progress=on_progress,
        on_iteration=on_iteration,
    )
    bar.close()
    state_file.unlink(missing_ok=True)  # the export's pruning.json now holds the whole result
    assert result.out_dir is not None  # no should_stop given: the search always finishes
    print_summary(json.loads((result.out_dir / "pruning.json").read_text()), time.time() - started)
    print(f"pruned model written to {result.out_dir.resolve()}")
    return 0


def print_summary(info: dict, seconds: float) -> None:
    rows = [("step", "block", "layer", "ppl")]
    rows.append(("0", "-", "-", f"{info['base_ppl']:.3f}"))
    for n, r in enumerate(info["removed"], 1):
        rows.append((str(n), r["block"], str(r["layer"]), f"{r['ppl']:.3f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for n, row in enumerate(rows):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    before, after = info["params_before"], info["params_after"]
    print(f"parameters: {before:,} -> {after:,} ({100 * (1 - after / before):.1f}% removed)")
    print(f"time: {seconds:.0f} s")


def cmd_ppl(args: argparse.Namespace) -> int:
    from core.pipeline import perplexity

    _quiet_transformers()
    ppl = perplexity(
        args.model,
        args.data,
        args.samples,
        args.seq_len,
        device=args.device,
        dtype=args.dtype,
        seed=args.seed,
    )
    print(f"ppl {ppl:.4f}")
    return 0


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed command; a user mistake is one line on stderr and exit code 2."""
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
