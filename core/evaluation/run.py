"""Evaluate variants of a model (before and after pruning) on one EvaluationSpec, side by side.

A variant is a factory of a context manager that yields a transformers causal LM: the loaded
base model (`nullcontext(model)`), the same model with blocks swapped out for as long as the
`with` lasts (`core.export.inmemory.pruned_view`), or an export loaded from disk. Each measure
runs every variant on the same tokens, prompts and examples, so the figures compare like with
like. The report is plain JSON (`report.json` of an export, `evaluation` of a job).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch

from contract.evaluation import EvaluationSpec
from core.calibration import read_tokens
from core.evaluation.perplexity import heldout_ppl

Variant = Callable[[], AbstractContextManager[Any]]
REPORT_VERSION = 1
# One prompt of 128 random tokens, then 32 greedy steps on the KV cache, median of 3 interleaved
# repeats: a short chat turn's shape, and quick enough to run beside a search.
SPEED_SETTINGS = {"prompt_len": 128, "batch_size": 1, "new_tokens": 32, "repeats": 3}


def evaluate(
    variants: Mapping[str, Variant],
    tokenizer: Any,
    spec: EvaluationSpec,
    *,
    paths: Mapping[str, str] | None = None,
    on_step: Callable[[str], None] | None = None,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """The report of every measure `spec` asks for, for every variant. `paths` maps a data
    source to a local copy of it (a worker downloads s3:// sources); `on_step` hears what is
    being measured; `notes` go into the report as they are."""
    step = on_step or (lambda _: None)
    started = time.monotonic()
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "variants": list(variants),
        "spec": spec.model_dump(mode="json"),
        "params": {name: _params(factory) for name, factory in variants.items()},
        "perplexity": {},
        "tasks": {},
        "speed": None,
        "notes": list(notes or []),
    }
    for source in spec.data:
        wanted = spec.max_tokens
        _, ids, _, complete = read_tokens((paths or {}).get(source, source), tokenizer, wanted)
        stream = torch.tensor(ids[:wanted] if wanted else ids, dtype=torch.long)
        entry: dict[str, Any] = {"seq_len": spec.seq_len, "stride": spec.stride or spec.seq_len}
        for name, factory in variants.items():
            step(f"perplexity on {source}: {name}")
            with factory() as model:
                result = heldout_ppl(model, stream, spec.seq_len, spec.stride)
            entry[name] = result.ppl
            entry.update(tokens=result.tokens, windows=result.windows)
        entry["whole_source"] = complete and (not wanted or len(ids) <= wanted)
        report["perplexity"][source] = entry
    if spec.tasks:
        from core.evaluation.tasks import zero_shot

        per_variant = {}
        for name, factory in variants.items():
            step(f"zero-shot tasks: {name}")
            with factory() as model:
                per_variant[name] = zero_shot(model, tokenizer, spec.tasks, limit=spec.task_limit)
        for task in per_variant[next(iter(variants))]:
            report["tasks"][task] = {name: per_variant[name][task] for name in variants}
    if spec.speed:
        from core.evaluation.speed import measure_speed

        step("speed and memory")
        speeds = measure_speed(dict(variants), **SPEED_SETTINGS)
        report["speed"] = {name: result.to_json() for name, result in speeds.items()}
        report["speed_settings"] = SPEED_SETTINGS
    report["seconds"] = round(time.monotonic() - started, 1)
    return report


def _params(factory: Variant) -> int:
    """Parameters of a variant (a no-op block has none; tied weights count once)."""
    with factory() as model:
        return sum(p.numel() for p in model.parameters())
