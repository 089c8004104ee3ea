"""The engine's commands: `blockprune prune` and `blockprune ppl`, run in-process, no services."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import ByteSize

from contract import EMBEDDED_DEFAULTS, JobSpec, SearchState, UserError
from contract.memory import DEVICE_HELP
from contract.methods import METHOD_TRAITS
from contract.spec import TARGET_FIELDS
from contract.state import RaceRecord
from core.eval_cli import add_eval_command, add_evaluation_options, evaluation_from_args
from core.gguf_cli import add_export_gguf_command
from core.report import format_table, table_rows

# `blockprune ppl` measures a model the way a job's search does: it takes these of a job's
# fields (and the calibration field as --data).
PPL_SPEC_FIELDS = ("model", "samples", "seq_len", "seed", "dtype")
PLAN_SPEC_FIELDS = ("model", "samples", "seq_len", "dtype", "batch_size", "cache_budget")


def add_engine_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="prune a model: BlockPruner's search or a baseline method")
    add_spec_options(p, [name for name in JobSpec.model_fields if name != "evaluation"])
    add_evaluation_options(p, prefix="eval-")
    p.add_argument("--output", help="export directory (default pruned/<model>-<N>blocks)")
    p.add_argument("--device", default="cpu", help=f"where to run: {DEVICE_HELP}")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT's saved state")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    p.add_argument(
        "--verify",
        action="store_true",
        help="with --search racing: also run each iteration exactly and report where the "
        "picks differ, with both PPLs (costs an exact search)",
    )
    p.set_defaults(func=cmd_prune)

    q = sub.add_parser("ppl", help="perplexity of a model (also an exported pruned DIR)")
    add_spec_options(q, PPL_SPEC_FIELDS)
    add_spec_option(q, "calibration", flag="--data")
    q.add_argument("--device", default="cpu", help=f"where to run: {DEVICE_HELP}")
    q.set_defaults(func=cmd_ppl)

    r = sub.add_parser("plan", help="memory and time of a search, at several cache budgets")
    add_spec_options(r, PLAN_SPEC_FIELDS)
    r.add_argument("--device", default="cpu", help=f"where it would run: {DEVICE_HELP}")
    r.add_argument("--tflops", type=float, help="the device's throughput (default: measured here)")
    r.set_defaults(func=cmd_plan)

    add_eval_command(sub)
    add_export_gguf_command(sub)


# ---- options derived from JobSpec ---------------------------------------------------------
def add_spec_options(parser: argparse.ArgumentParser, names: list[str] | tuple[str, ...]) -> None:
    """A `--kebab-name` option for each named JobSpec field; the target fields (give at most one)
    go in a mutually exclusive group."""
    targets = parser.add_mutually_exclusive_group() if set(TARGET_FIELDS) & set(names) else None
    for name in names:
        add_spec_option(targets if targets is not None and name in TARGET_FIELDS else parser, name)


def add_spec_option(
    parser: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup,
    name: str,
    flag: str | None = None,
) -> None:
    """The option of JobSpec field `name`: type, choices, help and default all come from the
    field (a required field's default from the embedded default job)."""
    info = JobSpec.model_fields[name]
    kind, choices = _value_type(info.annotation)
    default = EMBEDDED_DEFAULTS[name] if info.is_required() else info.default
    help = (info.description or "").replace("%", "%%")  # argparse %-formats help
    if name in TARGET_FIELDS and name in EMBEDDED_DEFAULTS:
        help += f" (default {EMBEDDED_DEFAULTS[name]} when no target is given)"
    elif default is not None:
        help += " (default %(default)s)"
    flag = flag or "--" + name.replace("_", "-")
    if info.annotation is bool:  # --heal / --no-heal
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help)
        return
    parser.add_argument(flag, type=kind, choices=choices, default=default, help=help)


def _value_type(annotation: Any) -> tuple[type, tuple[Any, ...] | None]:
    """The argparse type and choices of a field's annotation (`X | None` is X, `Literal[...]`
    its values' type with the values as choices)."""
    if get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = [a for a in get_args(annotation) if a is not type(None)]
    if annotation is ByteSize:  # "8GiB": pydantic parses the text
        return str, None
    if get_origin(annotation) is Literal:
        choices = get_args(annotation)
        return type(choices[0]), choices
    return annotation, None


def spec_from_args(args: argparse.Namespace) -> JobSpec:
    """The JobSpec of parsed `prune` options; with no target, the embedded job's target."""
    values = {name: getattr(args, name) for name in JobSpec.model_fields if name != "evaluation"}
    evaluation = evaluation_from_args(args, prefix="eval-")
    if evaluation is not None:
        values["evaluation"] = evaluation
    if all(values[t] is None for t in TARGET_FIELDS):
        values.update({t: EMBEDDED_DEFAULTS[t] for t in TARGET_FIELDS if t in EMBEDDED_DEFAULTS})
    return JobSpec.parse(values)


# ---- commands -----------------------------------------------------------------------------
def _quiet_transformers() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _state_path(output: Path) -> Path:
    return output.with_name(output.name + ".search-state.json")


def _read_state(path: Path) -> SearchState:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError("resume", f"{path} is not valid JSON: {e}") from None
    return SearchState.from_json(data)


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def cmd_prune(args: argparse.Namespace) -> int:
    from core.pipeline import run_prune
    from core.progress import SearchBar

    _quiet_transformers()
    spec = spec_from_args(args)
    if args.verify and spec.search != "racing":
        raise UserError(
            "verify", "checks a racing search against the exact one: add --search racing"
        )
    name = spec.model.split(":")[-1].rstrip("/").split("/")[-1] or "model"
    target = f"{spec.num_blocks}blocks" if spec.num_blocks else f"ratio{spec.param_ratio}"
    kind = spec.method if METHOD_TRAITS[spec.method].layer_units else spec.block_types
    output = Path(args.output or f"pruned/{name}-{kind}-{target}")
    state_file = _state_path(output)
    state = None
    if args.resume and state_file.exists():
        state = _read_state(state_file)
        print(f"resuming after {state.blocks_removed} removed blocks from {state_file}")
    elif args.resume:
        print(f"no saved state at {state_file}; starting a new search")
    if output.exists() and any(output.iterdir()) and not args.overwrite:
        raise UserError(
            "output", f"{output} exists and is not empty; use --overwrite or another --output"
        )
    output.parent.mkdir(parents=True, exist_ok=True)

    bar = SearchBar()
    started = time.time()

    def on_iteration(state: SearchState) -> None:
        _write_json_atomic(state_file, state.to_json())
        bar.removed(state.removed[-1])

    result = run_prune(
        spec,
        output,
        device=args.device,
        state=state,
        overwrite=args.overwrite,
        on_phase=bar.phase,
        on_plan=bar.write,
        on_progress=bar.scored,
        on_iteration=on_iteration,
        on_step=bar.step,
        verify=args.verify,
    )
    bar.close()
    state_file.unlink(missing_ok=True)  # the export's pruning.json now holds the whole result
    assert result.out_dir is not None  # no should_stop given: the search always finishes
    info = json.loads((result.out_dir / "pruning.json").read_text())
    print_summary(info, time.time() - started)
    if result.evaluation is not None:
        print(format_table(table_rows(result.evaluation)))
    if info.get("search", {}).get("mode") == "racing":
        print_table(race_rows(info["search"]))
    print(f"pruned model written to {result.out_dir.resolve()}")
    return 0


def print_summary(info: dict, seconds: float) -> None:
    print_table(removed_rows(info["base_ppl"], info["removed"]))
    before, after = info["params_before"], info["params_after"]
    print(f"parameters: {before:,} -> {after:,} ({100 * (1 - after / before):.1f}% removed)")
    print(f"time: {seconds:.0f} s")


def removed_rows(base_ppl: float | None, removed: Sequence[dict]) -> list[tuple[str, ...]]:
    """The PPL after each removed block (pruning.json's or a job's `removed`), from the base."""
    rows: list[tuple[str, ...]] = [
        ("step", "block", "layer", "ppl"),
        ("0", "-", "-", _ppl(base_ppl)),
    ]
    for n, r in enumerate(removed, 1):
        rows.append((str(n), r["block"], str(r["layer"]), _ppl(r["ppl"])))
    return rows


def race_rows(search: dict) -> list[tuple[str, ...]]:
    """Per racing iteration: candidates left after each stage, the work against an exact
    iteration's, and (verified) the exact pick where it differs."""
    ends = "/".join(str(n) for n in search["stage_sequences"])
    rows: list[tuple[str, ...]] = [("step", f"racing on {ends} sequences", "work", "exact pick")]
    for race in map(RaceRecord.model_validate, search["iterations"]):
        raced = " -> ".join(str(s.raced) for s in race.stages)
        exact, ours = race.exact, race.winner.ppl
        if exact is None:
            check = "-"
        elif race.agrees:
            check = "same"
        else:
            check = f"{exact} ppl {exact.ppl:.3f} (ours {ours:.3f})"
        rows.append((str(race.iteration), f"{raced} -> 1", f"{race.work:.0%}", check))
    return rows


def _ppl(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_table(rows: Sequence[Sequence[str]]) -> None:
    print(format_table([tuple(row) for row in rows]))


def cmd_ppl(args: argparse.Namespace) -> int:
    from core.evaluation import perplexity

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


def cmd_plan(args: argparse.Namespace) -> int:
    _quiet_transformers()
    values = {name: getattr(args, name) for name in PLAN_SPEC_FIELDS}
    spec = JobSpec.parse({**EMBEDDED_DEFAULTS, **values})
    print_plan(spec, args.device, args.tflops)
    return 0


def print_plan(spec: JobSpec, device: str, tflops: float | None = None) -> None:
    """`blockprune plan`: the model's memory, the cache's, and the peak and estimated time of
    an iteration at several budgets, against the devices' free memory."""
    from contract.memory import HEADROOM, choose_budget, human, plan_search
    from core.devices import parse_devices
    from core.models import DTYPES, locate_model
    from core.planner import capacity, measured_flops, read_shape

    devices = parse_devices(device)
    shape = read_shape(locate_model(spec.model).config_dir)  # an hf: model's weights stay put
    shape.check(spec)  # before anything the shape sizes is allocated
    cap = capacity(devices)
    if tflops is None:
        rates = measured_flops(devices[0], DTYPES[spec.dtype], shape, spec.seq_len)
        source = "measured here on a decoder layer and the lm_head"
    else:
        rates, source = (tflops * 1e12, tflops * 1e12), "given"
    args = (shape, spec.samples, spec.seq_len, spec.dtype, spec.batch_size)
    full = plan_search(*args, budget=None, kind=cap.kind)
    positions = len(full.layout.kept)
    print(f"model      {shape.params():,} parameters, {human(full.model)} in {spec.dtype}")
    print(
        f"cache      {spec.samples} x {spec.seq_len} tokens: {human(full.position)} per "
        f"position, {positions} positions = {human(full.cache)}"
    )
    print(
        f"working    {human(full.working)} (one chunk of {spec.batch_size or spec.samples} "
        "sequences: MLP, attention or lm_head tensors)"
    )
    print(
        f"device     {cap.device}: {human(cap.free)} usable "
        f"(free memory less {HEADROOM:.0%} headroom)"
    )
    print(
        f"throughput {rates[0] / 1e12:.3f} / {rates[1] / 1e12:.3f} TFLOP/s, decoder / lm_head "
        f"({source})"
    )
    budgets: dict[str, int | None] = {
        "all+held": None,
        "all": full.cache,
        "1/2": full.position * (positions // 2),
        "1/4": full.position * (positions // 4),
        "one position": full.position,
        "none": 0,
    }
    if spec.cache_budget is not None:
        budgets["--cache-budget"] = spec.cache_budget
    try:
        budgets["chosen"] = choose_budget(shape, spec, cap)[0]
    except UserError as e:
        print(f"does not fit: {e.message}")
    header = ("budget", "bytes", "kept", "cache", "held", "peak", "fits", "s/iteration")
    rows = [header]
    for name, budget in budgets.items():
        plan = plan_search(*args, budget=budget, host_budget=cap.host_free, kind=cap.kind)
        decoder, head = shape.iteration_flops(spec.samples, spec.seq_len, plan.layout)
        seconds = decoder / rates[0] + head / rates[1]
        rows.append(
            (
                name,
                "unlimited" if budget is None else human(budget),
                str(len(plan.layout.kept)),
                human(plan.cache) + (f" + {human(plan.host)} host" if plan.host else ""),
                human(plan.held),
                human(plan.peak),
                "yes" if plan.peak <= cap.free else "NO",
                f"{seconds:.1f}",
            )
        )
    print_table(rows)


# What the [engine] extra brings (pyproject.toml): without it only `blockprune jobs` (and the
# service's commands, with their extra) can run.
ENGINE_PACKAGES = frozenset(
    {"torch", "transformers", "safetensors", "tokenizers", "gguf", "accelerate", "numpy"}
)


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed command; a user mistake is one line on stderr and exit code 2."""
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # a client-only install: the engine is an extra
        if (e.name or "").split(".")[0] not in ENGINE_PACKAGES:
            raise
        print(
            f"error: `blockprune {args.command}` runs the engine, which is not installed "
            f"({e.name} is missing): pip install 'blockprune[engine]'",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
