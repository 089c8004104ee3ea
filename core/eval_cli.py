"""`blockprune eval`, and the evaluation options `blockprune prune` shares with it.

    blockprune eval --model pruned/smollm2-135m-mix-4blocks     # an export: before and after
    blockprune eval --model builtin:smollm2-135m --speed        # any model on its own
    blockprune eval --model DIR --base builtin:smollm2-135m     # a job's downloaded artifacts

An export's base model is read from its pruning.json; where that is not reachable here (an
s3:// or upload: model of the service) `--base` names a local copy, else only the pruned model
is measured. The options are the fields of contract.evaluation.EvaluationSpec.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from contract import UserError
from contract.evaluation import DEFAULT_EVAL_DATA, EvaluationSpec
from contract.memory import DEVICE_HELP
from contract.spec import DTYPES, EMBEDDED_DEFAULTS
from core.report import REPORT_FILE, REPORT_PLOT, format_table, report_svg, table_rows

FIELDS = EvaluationSpec.model_fields


def add_evaluation_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The EvaluationSpec fields as options, named `--{prefix}data`, `--{prefix}tasks`..."""

    def help_of(name: str) -> str:
        return (FIELDS[name].description or "").replace("%", "%%")

    group = parser.add_argument_group("evaluation (before and after, side by side)")
    group.add_argument(f"--{prefix}data", action="append", metavar="SOURCE", help=help_of("data"))
    group.add_argument(f"--{prefix}tasks", metavar="T1,T2", help=help_of("tasks"))
    group.add_argument(f"--{prefix}speed", action="store_true", help=help_of("speed"))
    for name in ("seq_len", "stride", "max_tokens", "task_limit"):
        flag = f"--{prefix}{name.replace('_', '-')}"
        if prefix and name == "seq_len":
            flag = "--eval-seq-len"  # prune's --seq-len is the calibration's
        default = FIELDS[name].default
        extra = f" (default {default})" if default is not None else ""
        group.add_argument(flag, type=int, dest=f"eval_{name}", help=help_of(name) + extra)


def evaluation_from_args(args: argparse.Namespace, prefix: str = "") -> EvaluationSpec | None:
    """The EvaluationSpec of parsed options; None when none was given."""
    attr = prefix.replace("-", "_")
    values: dict[str, Any] = {
        "data": getattr(args, f"{attr}data") or [],
        "tasks": [t.strip() for t in (getattr(args, f"{attr}tasks") or "").split(",") if t.strip()],
        "speed": getattr(args, f"{attr}speed"),
    }
    for name in ("seq_len", "stride", "max_tokens", "task_limit"):
        if getattr(args, f"eval_{name}") is not None:
            values[name] = getattr(args, f"eval_{name}")
    if not (values["data"] or values["tasks"] or values["speed"]):
        return None
    return parse_evaluation(values)


def parse_evaluation(values: dict[str, Any]) -> EvaluationSpec:
    try:
        return EvaluationSpec(**values)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in ("evaluation", *first["loc"]))
        raise UserError(field, str(first["msg"]).removeprefix("Value error, ")) from None


def add_eval_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="held-out PPL, zero-shot tasks, speed and memory, before and after pruning"
    )
    p.add_argument(
        "--model",
        default=EMBEDDED_DEFAULTS["model"],
        help="an export directory (its base model is measured too), a job's downloaded "
        "artifacts, or any model (default %(default)s)",
    )
    p.add_argument("--base", help="the unpruned model, where the export's own is not reachable")
    p.add_argument("--no-base", action="store_true", help="measure the given model only")
    p.add_argument("--device", default="cpu", help=f"where to run: {DEVICE_HELP}")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--output", help="folder for report.json and evaluation.svg")
    add_evaluation_options(p)
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from core.evaluation.run import evaluate
    from core.models import load_model

    spec = evaluation_from_args(args) or parse_evaluation({"data": [DEFAULT_EVAL_DATA]})
    pruning = _pruning_record(args.model)
    base, notes = _base_model(args, pruning)
    started = time.time()
    models = {}
    if base is not None:
        print(f"loading the base model {base}")
        models["before"] = load_model(base, args.device, args.dtype)
    print(f"loading {args.model}")
    models["after" if pruning is not None else _name(args.model)] = load_model(
        args.model, args.device, args.dtype
    )
    tokenizer = next(iter(models.values())).tokenizer
    if pruning is not None:
        calibration = (pruning.get("calibration") or {}).get("source")
        overlap = [s for s in spec.data if s == calibration]
        notes += [
            f"{s} is the pruning's calibration text: its PPL is not held-out" for s in overlap
        ]
    variants = {name: _fixed(loaded.model) for name, loaded in models.items()}
    report = evaluate(variants, tokenizer, spec, on_step=lambda s: print(f"  {s}"), notes=notes)
    report["models"] = {name: loaded.description["spec"] for name, loaded in models.items()}
    out = Path(args.output or f"evaluation/{_name(args.model)}")
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
    (out / REPORT_PLOT).write_text(report_svg(report))
    print(format_table(table_rows(report)))
    for note in notes:
        print(f"note: {note}")
    print(f"time: {time.time() - started:.0f} s; report: {(out / REPORT_FILE).resolve()}")
    return 0


def _fixed(model: Any):
    return lambda: nullcontext(model)


def _name(model: str) -> str:
    return model.split(":")[-1].rstrip("/").split("/")[-1] or "model"


def _pruning_record(model: str) -> dict | None:
    path = Path(model) / "pruning.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError("model", f"{path} is not valid JSON: {e}") from None


def _base_model(args: argparse.Namespace, pruning: dict | None) -> tuple[str | None, list[str]]:
    """The unpruned model to measure beside the given one, and notes for the report."""
    if args.no_base:
        return None, []
    if args.base:
        return args.base, []
    if pruning is None:
        return None, []
    base = str((pruning.get("base_model") or {}).get("model") or "")
    if base.startswith(("builtin:", "hf:")) or (base and Path(base).is_dir()):
        return base, []
    return None, [f"the base model {base or '(unknown)'} is not reachable here: pass --base"]
