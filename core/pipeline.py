"""One pruning job from spec to export: the recipe the CLI, a worker and a fanned-out job's
export item all run.

load model -> calibration tokens -> search (resumable) -> evaluate if asked -> export ->
publish. `run_job` is the recipe (`search_job`, then `finish_job`); what differs between its
callers is in small hooks (`JobHooks`): the CLI reports to a progress bar and keeps the export
where it wrote it, a worker writes phases and checkpoints through its lease, fetches the
evaluation's texts through S3 outages and uploads the export (worker/recipe.py). The spec is
saved in the export (pruning.json) and its result fields in the search state, so a resumed
search refuses, naming the fields, a state that was made with different settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contract import JobSpec, Phase, Progress, SearchState

# The engine (torch) is imported inside the functions: `blockprune --help` and a worker's start
# need the signatures, not torch. The types are for the checker only.
if TYPE_CHECKING:
    import torch

    from contract.memory import MemoryPlan
    from core.blocks import BlockModel
    from core.calibration import Calibration
    from core.heal import Healing
    from core.models import LoadedModel
    from core.search import CandidateScorer, SearchConfig


def _ignore(*_: Any) -> None:
    return None


def _never() -> bool:
    return False


@dataclass
class JobHooks:
    """What a caller of the recipe supplies; each has a do-nothing default."""

    phase: Callable[[Phase], None] = _ignore
    checkpoint: Callable[[SearchState], None] | None = None  # after each search iteration
    progress: Callable[[Progress], None] | None = None  # after each scored candidate
    should_stop: Callable[[], bool] = _never  # polled between candidates and between steps
    # Before each step after the search: refresh what `should_stop` reads (a worker renews its
    # lease and reads the cancel flag), so a cancel that came meanwhile wins.
    refresh: Callable[[], None] = _ignore
    evaluation_texts: Callable[[], dict[str, str] | None] = _ignore  # local copies, if any
    on_step: Callable[[str], None] | None = None  # the evaluation's steps
    publish: Callable[[Path], Any] = _ignore  # the export, written: a worker uploads it


@dataclass
class PruneResult:
    state: SearchState
    out_dir: Path | None = None  # None when the job was stopped before its export was published
    cancelled: bool = False
    evaluation: dict | None = None  # the report, when the spec asked for an evaluation
    published: Any = None  # what `JobHooks.publish` returned (a worker: the uploaded files)


@dataclass
class PreparedJob:
    """A job's model and calibration tokens, loaded: what a search or a share of one needs."""

    loaded: LoadedModel
    bm: BlockModel
    calibration: Calibration  # with the spec's source name
    input_ids: torch.Tensor  # on the job's (first) device
    plan: MemoryPlan | None = None  # the memory the planner expects
    cache_budget: int | None = None  # the budgets the planner chose for this machine
    host_budget: int = 0

    def search_config(self, spec: JobSpec, verify: bool = False) -> SearchConfig:
        """The spec's core.search.SearchConfig with this machine's budgets (`verify`: a racing
        search also runs each iteration exactly and records the exact pick)."""
        from core.search import SearchConfig

        return SearchConfig.of(spec, self.cache_budget, self.host_budget, verify)

    def search_record(self, spec: JobSpec, state: SearchState) -> dict:
        """pruning.json's account of the search (core.racing.search_record)."""
        from core.racing import search_record

        if spec.search != "racing":
            return search_record(spec.search)
        config = self.search_config(spec)
        stages = config.stages(len(self.input_ids))
        return search_record(spec.search, stages, config.race_margin, state.races)

    def scorer(self, spec: JobSpec) -> CandidateScorer:
        """A core.search.CandidateScorer for shares of this job's iterations (in racing's
        chunks for a racing search, so its stages end on chunk boundaries)."""
        from core.search import CandidateScorer

        chunk = self.search_config(spec).chunk(len(self.input_ids))
        return CandidateScorer(self.bm, self.input_ids, chunk, self.cache_budget, self.host_budget)


def prepare_job(
    spec: JobSpec,
    *,
    device: str = "cpu",
    cache_dir: str | None = None,
    model_path: str | None = None,
    calibration_path: str | None = None,
    on_phase: Callable[[Phase], None] | None = None,
    machine_budget: int | None = None,
    on_plan: Callable[[str], None] | None = None,
    max_weight_bytes: int | None = None,
) -> PreparedJob:
    """Check that the search fits (core.planner, on config.json before any weight is read or,
    for an hf: model, downloaded), load the model and tokenize the calibration text.
    `model_path`/`calibration_path` are local copies of the spec's model/calibration (a worker
    downloads s3:// inputs); the spec keeps the original names. `cache_dir` is where converted
    builtin models are cached; `machine_budget` caps the activation cache where the spec does
    not set one; `max_weight_bytes` caps an hf: model's safetensors (None: any size). `on_plan`
    gets the plan in one line."""
    from contract.memory import choose_budget
    from core.blocks import BlockModel
    from core.calibration import load_calibration
    from core.devices import parse_devices
    from core.models import load_model, locate_model
    from core.planner import capacity, read_shape

    phase = on_phase or (lambda _: None)
    phase(Phase.LOADING)
    if spec.evaluation is not None and spec.evaluation.tasks:
        from core.evaluation.tasks import check_tasks

        check_tasks(spec.evaluation.tasks)  # before the search, not after it
    devices = parse_devices(device)
    source = locate_model(model_path or spec.model, cache_dir, max_weight_bytes)
    shape = read_shape(source.config_dir)
    shape.check(spec)  # a sequence or a target the model cannot take: before its weights load
    cap = capacity(devices)
    budget, host_budget, plan = choose_budget(shape, spec, cap, machine_budget)
    if on_plan is not None:
        on_plan(plan.describe(cap.free, cap.device))
    resolved = (source.name, source.fetch())  # a hub model's weights: only now that it fits
    loaded = load_model(model_path or spec.model, device, spec.dtype, resolved=resolved)
    bm = BlockModel(loaded.model)
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
    input_ids = calibration.input_ids.to(bm.device)
    prepared = PreparedJob(loaded, bm, calibration, input_ids, plan, budget, host_budget)
    prepared.search_config(spec).validate(bm)
    return prepared


def evaluate_job(
    prepared: PreparedJob,
    spec: JobSpec,
    state: SearchState,
    *,
    paths: dict[str, str] | None = None,
    on_step: Callable[[str], None] | None = None,
    healing: Healing | None = None,
) -> dict | None:
    """The job's evaluation (`spec.evaluation`) of the loaded model before and after removing
    the search's blocks, side by side; None when the job asks for none. The pruned variant is
    the loaded model with the export's no-op modules swapped in (core.export.inmemory), which
    computes what the export computes, without a second copy of the weights (with `healing`,
    its healed weights swapped in too)."""
    from contextlib import contextmanager, nullcontext

    from core.evaluation.run import Variant, evaluate
    from core.export.inmemory import pruned_view
    from core.heal import applied

    if spec.evaluation is None or not spec.evaluates:
        return None
    model = prepared.loaded.model
    removed = state.removed_blocks

    @contextmanager
    def after() -> Iterator[Any]:
        with applied(healing), pruned_view(model, removed) as pruned:
            yield pruned

    variants: dict[str, Variant] = {"before": lambda: nullcontext(model), "after": after}
    return evaluate(
        variants, prepared.loaded.tokenizer, spec.evaluation, paths=paths, on_step=on_step
    )


def export_job(
    prepared: PreparedJob,
    spec: JobSpec,
    state: SearchState,
    out_dir: str | Path,
    evaluation: dict | None = None,
    healing: Healing | None = None,
    **kw: Any,
) -> Path:
    """Write the pruned model of a finished search (core.export), with its evaluation report
    when there is one, and healed when `healing` is given."""
    from core.heal import applied

    with applied(healing):
        path = _export(prepared, spec, state, out_dir, evaluation, healing, **kw)
    return Path(path)


def _export(
    prepared: PreparedJob,
    spec: JobSpec,
    state: SearchState,
    out_dir: str | Path,
    evaluation: dict | None,
    healing: Healing | None,
    **kw: Any,
) -> Path:
    from core.export import export_pruned

    assert state.base_ppl is not None  # a finished search has measured the unpruned model
    return export_pruned(
        prepared.loaded.model,
        prepared.loaded.tokenizer,
        [r.model_dump() for r in state.removed],
        out_dir,
        base_ppl=state.base_ppl,
        calibration=prepared.calibration.description,
        seed=spec.seed,
        source={
            **prepared.loaded.description,
            "model": spec.model,
            "settings": spec.model_dump(mode="json"),
        },
        method=spec.method,
        search=prepared.search_record(spec, state),
        evaluation=evaluation,
        healing=None if healing is None else healing.to_json(),
        general=spec.general_export,
        **kw,
    )


def search_job(
    prepared: PreparedJob,
    spec: JobSpec,
    state: SearchState,
    hooks: JobHooks,
    verify: bool = False,
) -> SearchState:
    """The spec's method from `state` (core.methods), in the phase `searching`."""
    from core.methods import run_method

    hooks.phase(Phase.SEARCHING)
    return run_method(
        prepared.bm,
        prepared.input_ids,
        prepared.search_config(spec, verify),
        state,
        on_iteration=hooks.checkpoint,
        on_progress=hooks.progress,
        should_stop=hooks.should_stop,
    )


def finish_job(
    prepared: PreparedJob,
    spec: JobSpec,
    state: SearchState,
    out_dir: str | Path,
    hooks: JobHooks,
    **export_kw: Any,
) -> PruneResult:
    """What every job does after its search: evaluate if asked, export, publish. Stopped
    (`cancelled`) when the search did not finish, or `should_stop` says so before the
    evaluation, before publishing or once the publish returns."""

    def stop_now() -> bool:
        hooks.refresh()
        return hooks.should_stop()

    if not state.done or stop_now():
        return PruneResult(state, cancelled=True)
    healing = None
    if spec.heal:  # fitted once; the evaluation and the export swap it in
        from core.heal import fit_healing

        healing = fit_healing(
            prepared.bm, prepared.input_ids, state.removed_blocks, spec.batch_size
        )
    evaluation = None
    if spec.evaluates:
        hooks.phase(Phase.EVALUATING)
        paths = hooks.evaluation_texts()
        evaluation = evaluate_job(
            prepared, spec, state, paths=paths, on_step=hooks.on_step, healing=healing
        )
    hooks.phase(Phase.EXPORTING)
    out = export_job(prepared, spec, state, out_dir, evaluation, healing, **export_kw)
    if stop_now():
        return PruneResult(state, cancelled=True, evaluation=evaluation)
    published = hooks.publish(out)
    if stop_now():  # a publish cut short by a stop (a worker's upload) publishes nothing
        return PruneResult(state, cancelled=True, evaluation=evaluation)
    return PruneResult(state, out, evaluation=evaluation, published=published)


def run_job(
    prepared: PreparedJob,
    spec: JobSpec,
    state: SearchState,
    out_dir: str | Path,
    hooks: JobHooks,
    verify: bool = False,
    **export_kw: Any,
) -> PruneResult:
    """The recipe: search from `state`, then finish (evaluate, export, publish)."""
    state = search_job(prepared, spec, state, hooks, verify)
    return finish_job(prepared, spec, state, out_dir, hooks, **export_kw)


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
    on_plan: Callable[[str], None] | None = None,
    on_iteration: Callable[[SearchState], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[str], None] | None = None,
    verify: bool = False,
) -> PruneResult:
    """One pruning job in this process (the CLI's): prepare, then the recipe with the caller's
    callbacks; the export stays in `out_dir`. `on_step` hears the evaluation's steps; `verify`:
    a racing search checks each pick against the exact search's (pruning.json reports any
    disagreement)."""
    if state is None:
        state = SearchState.new(spec)
    else:
        state.check_resumable(spec)
        # Same result fields: record them in a state saved before states carried them.
        state = dataclasses.replace(state, spec=spec.result_fields())
    prepared = prepare_job(
        spec,
        device=device,
        cache_dir=cache_dir,
        model_path=model_path,
        calibration_path=calibration_path,
        on_phase=on_phase,
        on_plan=on_plan,
    )
    hooks = JobHooks(
        phase=on_phase or _ignore,
        checkpoint=on_iteration,
        progress=on_progress,
        should_stop=should_stop or _never,
        on_step=on_step,
    )
    return run_job(prepared, spec, state, out_dir, hooks, verify, overwrite=overwrite)
