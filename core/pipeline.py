"""One pruning job from spec to export: the recipe both the CLI and the service worker run.

load model -> calibration tokens -> greedy search (resumable) -> export. The spec is saved
in the export (pruning.json) and hashed into the search state, so a resumed search refuses a
state that was made with different settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.blocks import BlockModel
from core.errors import UserError
from core.models import DTYPES as MODEL_DTYPES
from core.search import (
    ProgressCallback,
    SearchConfig,
    StateCallback,
    config_hash,
    new_state,
    run_search,
)

DTYPES = tuple(MODEL_DTYPES)
DEVICES = ("cpu", "cuda")


@dataclass
class PruneSpec:
    model: str = "builtin:smollm2-135m"
    calibration: str = "builtin:stdlib-docs"
    num_blocks: int | None = None
    param_ratio: float | None = None
    block_types: str = "mix"
    samples: int = 8  # small defaults: the embedded default job runs in minutes on 2 CPU cores
    seq_len: int = 64
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int | None = None
    text_field: str = "text"
    # Where to cache converted/downloaded models; not part of the result.
    cache_dir: str | None = field(default=None, compare=False)

    def validate(self) -> None:
        self.search_config().check()
        if self.samples < 1:
            raise UserError("samples", f"must be at least 1, got {self.samples}")
        if self.seq_len < 2:
            raise UserError("seq_len", f"must be at least 2, got {self.seq_len}")
        if self.dtype not in DTYPES:
            raise UserError("dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.device not in DEVICES:
            raise UserError("device", f"must be one of {', '.join(DEVICES)}, got {self.device!r}")

    def config_hash(self) -> str:
        """Everything that changes which blocks are chosen; not the target length, so a finished
        search can be extended, and not the batch size or cache (same picks either way)."""
        keys: tuple[str, ...] = ("model", "calibration", "block_types", "samples", "seq_len")
        keys = (*keys, "seed", "dtype", "text_field")
        return config_hash({k: getattr(self, k) for k in keys})

    def search_config(self) -> SearchConfig:
        return SearchConfig(self.num_blocks, self.param_ratio, self.block_types, self.batch_size)

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("cache_dir")
        return d


@dataclass
class PruneResult:
    state: dict
    out_dir: Path | None
    cancelled: bool = False


def run_prune(
    spec: PruneSpec,
    out_dir: str | Path,
    *,
    model_path: str | None = None,
    calibration_path: str | None = None,
    state: dict | None = None,
    overwrite: bool = False,
    on_phase: Callable[[str], None] | None = None,
    on_iteration: StateCallback | None = None,
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> PruneResult:
    """Run one pruning job. `model_path`/`calibration_path` are local copies of the spec's
    model/calibration (a worker downloads s3:// inputs); the spec keeps the original names."""
    from core.calibration import load_calibration
    from core.export import export_pruned
    from core.models import load_model

    spec.validate()
    expected = spec.config_hash()
    if state is not None and state.get("config_hash") != expected:
        raise UserError(
            "resume",
            "the saved search state was made with different settings "
            f"(state {state.get('config_hash')}, now {expected}); start a new search instead",
            code="state_mismatch",
        )
    phase = on_phase or (lambda _: None)

    phase("loading")
    loaded = load_model(model_path or spec.model, spec.device, spec.dtype, spec.cache_dir)
    bm = BlockModel(loaded.model)
    spec.search_config().validate(bm)

    phase("calibrating")
    calibration = load_calibration(
        calibration_path or spec.calibration,
        loaded.tokenizer,
        spec.samples,
        spec.seq_len,
        spec.seed,
        text_field=spec.text_field,
    )
    calibration.description["source"] = spec.calibration
    input_ids = calibration.input_ids.to(spec.device)

    phase("searching")
    state = run_search(
        bm,
        input_ids,
        spec.search_config(),
        state or new_state(expected),
        on_iteration=on_iteration,
        on_progress=on_progress,
        should_stop=should_stop,
    )
    if not state["done"]:
        return PruneResult(state, None, cancelled=True)

    phase("exporting")
    path = export_pruned(
        loaded.model,  # type: ignore[arg-type]  # a PreTrainedModel, typed as its nn.Module base
        loaded.tokenizer,
        state["removed"],
        out_dir,
        base_ppl=state["base_ppl"],
        calibration=calibration.description,
        seed=spec.seed,
        source={**loaded.description, "model": spec.model, "settings": spec.to_json()},
        overwrite=overwrite,
    )
    return PruneResult(state, Path(path))


def perplexity(
    model_spec: str,
    data: str,
    samples: int,
    seq_len: int,
    *,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
) -> float:
    """PPL of a model (a checkpoint, a builtin, or an exported pruned DIR) on calibration data."""
    from core.calibration import load_calibration
    from core.models import load_model
    from core.naive import full_pass_ppl

    loaded = load_model(model_spec, device, dtype)
    calibration = load_calibration(data, loaded.tokenizer, samples, seq_len, seed)
    return full_pass_ppl(BlockModel(loaded.model), calibration.input_ids.to(device), [])
