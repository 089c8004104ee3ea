"""One pruning job from spec to export: the recipe both the CLI and the service worker run.

load model -> calibration tokens -> greedy search (resumable) -> export. The spec is saved in
the export (pruning.json) and its result fields in the search state, so a resumed search refuses,
naming the fields, a state that was made with different settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from contract import JobSpec, Phase, Progress, SearchState, UserError

# Where a job runs is the machine's choice, not the job's, so it is no JobSpec field.
DEVICES = ("cpu", "cuda")
# The engine (torch) is imported by run_prune only: `blockprune --help` and a worker's start
# need DEVICES and the signature, not torch.


@dataclass
class PruneResult:
    state: SearchState
    out_dir: Path | None  # None when the search was stopped before its end
    cancelled: bool = False


def run_prune(
    spec: JobSpec,
    out_dir: str | Path,
    *,
    device: str = "cpu",
    cache_dir: str | None = None,
    model_path: str | None = None,
    calibration_path: str | None = None,
    state: SearchState | None = None,
    overwrite: bool = False,
    on_phase: Callable[[Phase], None] | None = None,
    on_iteration: Callable[[SearchState], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> PruneResult:
    """Run one pruning job. `model_path`/`calibration_path` are local copies of the spec's
    model/calibration (a worker downloads s3:// inputs); the spec keeps the original names.
    `cache_dir` is where converted builtin models are cached; it changes no result."""
    from core.blocks import BlockModel
    from core.calibration import load_calibration
    from core.export import export_pruned
    from core.models import load_model
    from core.search import SearchConfig, run_search

    if device not in DEVICES:
        raise UserError("device", f"must be one of {', '.join(DEVICES)}, got {device!r}")
    config = SearchConfig.of(spec)
    if state is None:
        state = SearchState.new(spec)
    else:
        state.check_resumable(spec)
        # Same result fields: record them in a state saved before states carried them.
        state = dataclasses.replace(state, spec=spec.result_fields())
    phase = on_phase or (lambda _: None)

    phase(Phase.LOADING)
    loaded = load_model(model_path or spec.model, device, spec.dtype, cache_dir)
    bm = BlockModel(loaded.model)
    config.validate(bm)

    phase(Phase.CALIBRATING)
    calibration = load_calibration(
        calibration_path or spec.calibration,
        loaded.tokenizer,
        spec.samples,
        spec.seq_len,
        spec.seed,
        text_field=spec.text_field,
    )
    calibration.description["source"] = spec.calibration
    input_ids = calibration.input_ids.to(device)

    phase(Phase.SEARCHING)
    state = run_search(
        bm,
        input_ids,
        config,
        state,
        on_iteration=on_iteration,
        on_progress=on_progress,
        should_stop=should_stop,
    )
    if not state.done:
        return PruneResult(state, None, cancelled=True)

    phase(Phase.EXPORTING)
    assert state.base_ppl is not None  # a finished search has measured the unpruned model
    path = export_pruned(
        loaded.model,  # type: ignore[arg-type]  # a PreTrainedModel, typed as its nn.Module base
        loaded.tokenizer,
        [r.model_dump() for r in state.removed],
        out_dir,
        base_ppl=state.base_ppl,
        calibration=calibration.description,
        seed=spec.seed,
        source={
            **loaded.description,
            "model": spec.model,
            "settings": spec.model_dump(mode="json"),
        },
        overwrite=overwrite,
    )
    return PruneResult(state, Path(path))
