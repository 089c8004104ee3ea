"""Load an export back as the stock transformers class of its base architecture, without running
any code from the export directory and without unpickling."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file

from contract import UserError
from core.export.hf_modeling_template import apply_block_configs, block_config_flags
from core.export.modeling_code import (
    WEIGHTS_FILE,
    WEIGHTS_INDEX_FILE,
    read_export_config,
    read_json,
    tied_names,
)
from core.families import SUPPORTED_MODEL_TYPES, family_of

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def load_pruned(
    directory: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> PreTrainedModel:
    """Load an export (either layout) as the stock transformers class of its base architecture,
    with the same no-op blocks as its modeling code, and every stored weight loaded (missing or
    unexpected weights are an error). Runs no code from the directory and never unpickles."""
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = Path(directory)
    export = read_export_config(directory)
    if export.base_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(
            "config.json",
            f"base model type {export.base_type!r} is not one of {SUPPORTED_MODEL_TYPES}",
        )
    family = family_of(export.base_type)  # a clear error where this transformers cannot run it
    try:
        base_config = AutoConfig.for_model(export.base_type, **export.fields)
        if not export.plain:
            block_config_flags(export.block_configs, base_config.num_hidden_layers)
    except (TypeError, ValueError) as err:
        raise UserError("config.json", str(err)) from err
    if dtype is None:
        dtype = base_config.dtype if isinstance(base_config.dtype, torch.dtype) else torch.float32

    with _no_init_weights(), torch.device(device):
        model = AutoModelForCausalLM.from_config(base_config, dtype=dtype)
    if getattr(base_config, "tie_word_embeddings", False):
        model.tie_weights()
    if not export.plain:
        apply_block_configs(model, export.block_configs, family.export_parts())
    _load_weights_strictly(model, directory, device)
    return model.eval()


def _load_weights_strictly(
    model: PreTrainedModel, directory: Path, device: str | torch.device
) -> None:
    index_path = directory / WEIGHTS_INDEX_FILE
    if index_path.exists():
        weight_map = read_json(index_path, WEIGHTS_INDEX_FILE).get("weight_map")
        if not isinstance(weight_map, dict):
            raise UserError(WEIGHTS_INDEX_FILE, "has no weight_map")
        files = sorted(set(weight_map.values()))
    else:
        files = [WEIGHTS_FILE]
    expected = set(model.state_dict()) - tied_names(model)
    loaded: set[str] = set()
    for filename in files:
        path = directory / filename
        if Path(filename).name != filename or not path.is_file():
            raise UserError("weights", f"weight file {filename!r} is missing from {directory}")
        shard = load_file(path, device=str(device))
        unexpected = (set(shard) - expected) | (set(shard) & loaded)
        if unexpected:
            raise UserError(
                "weights", f"{filename} has unexpected weights: {sorted(unexpected)[:5]}"
            )
        try:
            model.load_state_dict(shard, strict=False)
        except RuntimeError as err:  # shape mismatch
            raise UserError("weights", f"{filename} does not fit the config: {err}") from err
        loaded |= set(shard)
    missing = expected - loaded
    if missing:
        raise UserError(
            "weights", f"{len(missing)} weights are missing, e.g. {sorted(missing)[:5]}"
        )


def _no_init_weights():
    """Skip random initialisation of weights that are about to be loaded (a large model's random
    init costs more than its loading)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers < 5
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()
