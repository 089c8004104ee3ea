"""Zero-shot task accuracy of an in-memory model, through lm-evaluation-harness's Python API.

lm_eval is an optional extra (`.[eval]`), imported only inside `zero_shot`, so this module
imports without it. The model is handed over as it is in memory (a pruned model has no-op
modules in place of its removed blocks and is never reloaded from disk).
"""

from __future__ import annotations

import difflib
import functools
import logging
import numbers
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from contract import ErrorCode, UserError
from core.hub import hub_offline

FIELD = "tasks"
YAML_SUFFIXES = (".yaml", ".yml")
_NAME_LINE = re.compile(r"^(task|group):[ \t]*['\"]?([^'\"#\s]+)", re.MULTILINE)
_UNREACHABLE_TYPES = {"ConnectionError", "TransportError", "OfflineModeIsEnabled"}


def is_local_task(entry: str) -> bool:
    """Whether a task entry names a local task YAML file rather than a harness task."""
    return entry.lower().endswith(YAML_SUFFIXES)


def zero_shot(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str],
    *,
    limit: int | None = None,
    batch_size: int = 8,
    device: str | None = None,
) -> dict[str, dict[str, float | int]]:
    """{task name: {"acc": ..., "acc_norm": ... (when the task reports it), "samples": n,
    "acc_stderr": ..., ...}} for each harness task name or local task YAML in `tasks`.

    `limit`: at most this many documents per task (None: all). `device`: where to run; the model
    is moved there in place (None: wherever it already lies)."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise _missing_lm_eval() from None
    if tokenizer.bos_token_id is None and tokenizer.eos_token_id is None:
        # lm_eval scores an empty context after the BOS (or else EOS) token and probes every
        # string for that token's text: with neither it fails deep inside on a None token id.
        message = "the tokenizer has neither a BOS nor an EOS token, which zero-shot tasks need"
        raise UserError("model", message, ErrorCode.BAD_TOKENIZER)
    manager, names = _resolve(tasks)
    with _quiet_lm_eval():
        if device is not None:
            model.to(device)  # HFLM ignores `device` for a model passed in memory
        # backend="causal": our models are all decoder-only, and an export's config says
        # model_type "blockprune", which lm_eval would not recognise as causal.
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, backend="causal")
        try:
            out = lm_eval.simple_evaluate(
                model=lm,
                tasks=list(dict.fromkeys(names)),
                task_manager=manager,
                limit=limit,
                log_samples=False,  # per-document outputs: kept nowhere, so not worth the memory
            )
        except Exception as e:
            error = _as_user_error(e)
            if error is None:
                raise
            raise error from e
    assert out is not None  # None only on a non-zero rank of a distributed run
    return _plain(out)


def check_tasks(tasks: Sequence[str]) -> None:
    """Fail now, before any model is loaded or searched, on what `zero_shot` would refuse:
    lm_eval missing, a task file missing, a name the harness does not know."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise _missing_lm_eval() from None
    _resolve(tasks)


def _missing_lm_eval() -> UserError:
    message = "zero-shot tasks need lm-evaluation-harness: pip install -e '.[eval]'"
    return UserError(FIELD, message, ErrorCode.MISSING_DEPENDENCY)


def _resolve(tasks: Sequence[str]) -> tuple[Any, list[str]]:
    """lm_eval's task manager for `tasks` and their names, each checked."""
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)  # one name, not its letters
    if not tasks:
        raise UserError(FIELD, "no task given")
    names: list[str] = []
    folders: dict[str, None] = {}  # ordered, without repeats
    for entry in tasks:
        if not is_local_task(entry):
            names.append(entry)
            continue
        path = Path(entry).expanduser()
        if not path.is_file():
            raise UserError(FIELD, f"no task file {entry}", ErrorCode.NOT_FOUND)
        names.append(_task_name(path))
        folders[str(path.resolve().parent)] = None
    with _quiet_lm_eval():
        # Indexing the harness's ~15k bundled task configs takes seconds: only done when a
        # harness name is asked for (a local YAML that includes a harness task's YAML by
        # relative path still works; one that names a harness task needs that name given too).
        manager = _task_manager(tuple(folders), any(not is_local_task(t) for t in tasks))
        for entry, name in zip(tasks, names, strict=True):
            if name not in manager.all_tasks:
                raise UserError(FIELD, _unknown(entry, name, manager.all_tasks))
    return manager, names


def _task_name(path: Path) -> str:
    """The `task:` (or, for a group file, `group:`) name a local task YAML declares."""
    import yaml

    text = path.read_text(encoding="utf-8")
    try:
        config = yaml.safe_load(text)
    except yaml.constructor.ConstructorError:  # lm_eval's own tags (!function ...)
        config = None
    except yaml.YAMLError as e:
        raise UserError(FIELD, f"{path} is not valid YAML ({e})") from None
    if isinstance(config, dict):
        for key in ("task", "group"):  # a group file's `task:` is its list of members
            if isinstance(config.get(key), str):
                return str(config[key])
    else:  # safe_load stopped at a tag: the top-level key, read off its line
        found = {m.group(1): m.group(2) for m in _NAME_LINE.finditer(text)}
        if found:
            return found.get("task") or found["group"]
    raise UserError(FIELD, f"{path} declares no `task:` name")


@functools.lru_cache(maxsize=1)
def _harness_tasks() -> Any:
    """The bundled tasks' index, built once per process: the installed configs do not change."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def _task_manager(folders: tuple[str, ...], harness: bool) -> Any:
    from lm_eval.tasks import TaskManager

    if not folders:
        return _harness_tasks()
    # Local folders are indexed afresh on every call: their YAML files may have been edited.
    return TaskManager(include_path=list(folders), include_defaults=harness)


def _unknown(entry: str, name: str, known: Sequence[str]) -> str:
    if is_local_task(entry):
        return f"{entry} declares task {name!r}, which lm_eval did not index from its folder"
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown lm_eval task {name!r}{hint} (a local task must be a .yaml path)"


def _as_user_error(e: BaseException) -> UserError | None:
    """A task's dataset that cannot be had, as the user's error (None: not one of those)."""
    seen: BaseException | None = e
    while seen is not None:  # datasets raises ConnectionError, HTTP clients their own types
        names = {c.__name__ for c in type(seen).__mro__}
        if isinstance(seen, ConnectionError | TimeoutError) or names & _UNREACHABLE_TYPES:
            why = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub is unreachable"
            message = (
                f"{why} and a task's dataset is not in the local datasets cache ({e}); "
                "run it once online or use a local task YAML"
            )
            return UserError(FIELD, message, ErrorCode.HUB_UNREACHABLE)
        seen = seen.__cause__
    if isinstance(e, FileNotFoundError):  # a local task's data_files
        message = f"{e} (datasets reads a relative data file from the working directory)"
        return UserError(FIELD, message, ErrorCode.NOT_FOUND)
    return None


def _plain(out: dict[str, Any]) -> dict[str, dict[str, float | int]]:
    """lm_eval's results as plain JSON numbers, "acc,none" as "acc" (other filters keep their
    suffix: "exact_match,strict-match"), with the number of documents scored as "samples"."""
    results: dict[str, dict[str, float | int]] = {}
    for task, metrics in out["results"].items():
        row: dict[str, float | int] = {}
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                continue  # "alias", and stderrs lm_eval could not compute ("N/A")
            metric = key.removesuffix(",none")  # numpy scalars too, as Python numbers:
            row[metric] = int(value) if isinstance(value, numbers.Integral) else float(value)
        samples = row.pop("sample_len", None)  # newer lm_eval: the count in the row as well
        samples = out.get("n-samples", {}).get(task, {}).get("effective", samples)
        if samples is not None:
            row["samples"] = int(samples)
        results[task] = row
    return results


@contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm_eval logs every step at INFO and warns about in-memory models on each run."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
