"""Export a block-pruned model as a directory that loads, and load it back without remote code.

An export directory holds the kept weights (`model.safetensors`, or shards plus the standard
`model.safetensors.index.json`), a `config.json` of model type "blockprune" that keeps the base
architecture's fields and describes each kept layer in `block_configs`, the modeling code
(`modeling_blockprune.py`, rendered from `core/export/hf_modeling_template.py`) that lets stock
transformers load it with `trust_remote_code=True`, the tokenizer, `pruning.json` and a model card.

A layer whose two blocks are both removed is dropped, so exported layer j is original layer
`pruning.json["kept_layers"][j]`. Removed blocks are no-ops that add exactly zero to the residual
stream, so the export computes what `BlockModel.forward_logits(ids, removed)` computes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import save_file

import core
from contract import ErrorCode, UserError
from contract.blocks import Block, layer_blocks
from core.blocks import BlockModel
from core.export.hf_modeling_template import NoOpAttention, NoOpMLP
from core.export.inmemory import block_configs as layer_block_configs
from core.export.modeling_code import (
    MODEL_TYPE,
    MODELING_FILE,
    PRUNING_FILE,
    WEIGHTS_INDEX_FILE,
    per_layer_fields,
    render_modeling_code,
    tied_names,
)
from core.files import apply_umask, save_tokenizer
from core.model_card import render_model_card
from core.plot import pruning_svg
from core.report import REPORT_FILE, REPORT_PLOT, report_svg

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def export_pruned(
    model: PreTrainedModel,
    tokenizer,
    removed: list[dict],
    out_dir: str | os.PathLike,
    *,
    base_ppl: float,
    calibration: dict,
    seed: int,
    source: dict | None = None,
    max_shard_size: str | int = "2GB",
    overwrite: bool = False,
    method: str = "blockpruner",
    search: dict | None = None,
    evaluation: dict | None = None,
    healing: dict | None = None,
    general: bool = False,
) -> Path:
    """Write the original (unpruned) `model` with the `removed` blocks taken out to `out_dir`.

    `removed` lists `{"block": "mha"|"mlp", "layer": i, "ppl": PPL after removing it}` in removal
    order; `source` describes the base model (e.g. `{"model": "org/name", "revision": ...}`);
    `method` is the pruning method that chose them; `search` how (core.racing.search_record);
    `healing` what core.heal folded into the weights (the model's weights are written as they
    are: healed inside `core.heal.applied`); `evaluation` a core.evaluation report, written
    as report.json and evaluation.svg and summed up in the model card.
    When only whole layers were removed the export is plain (the base architecture with fewer
    layers, no remote code: core.export.modeling_code), unless `general` asks for the general
    layout (model type "blockprune") anyway.
    The directory appears complete or not at all; an existing non-empty one is refused unless
    `overwrite`. Returns the directory's path."""
    block_model = BlockModel(model)
    if any(isinstance(m, (NoOpAttention, NoOpMLP)) for m in model.modules()):
        raise UserError("model", "is already pruned; export from the original model")
    blocks = _parse_removed(block_model, removed)
    _check_record(base_ppl=base_ppl, calibration=calibration, seed=seed, source=source)
    _check_shard_size(max_shard_size)
    modeling_code = render_modeling_code(model)
    out = _check_out_dir(out_dir, overwrite)

    removed_set = set(blocks)
    kept_layers, layout, config = _layout(model, block_model, removed_set, general)
    tensors = _kept_tensors(block_model, removed_set, kept_layers)
    try:
        split = split_torch_state_dict_into_shards(tensors, max_shard_size=max_shard_size)
    except (ValueError, TypeError) as err:
        raise UserError(
            "max_shard_size", f"expected a size such as '2GB' or a byte count: {err}"
        ) from err

    params_before = block_model.total_params()
    pruning = {
        "engine_version": core.__version__,
        "method": method,
        "layout": layout,
        **({"search": search} if search is not None else {}),
        "base_model": source if source is not None else _default_source(model),
        "base_model_type": model.config.model_type,
        "base_ppl": float(base_ppl),
        "final_ppl": float(removed[-1]["ppl"]) if removed else float(base_ppl),
        "removed": [
            {**b.model_dump(), "ppl": float(r["ppl"])} for b, r in zip(blocks, removed, strict=True)
        ],
        "params_before": params_before,
        "params_after": params_before - sum(block_model.block_params(b) for b in blocks),
        "num_layers_before": block_model.num_layers,
        "kept_layers": kept_layers,
        "calibration": calibration,
        "seed": seed,
        **({"healing": healing} if healing is not None else {}),
    }

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        if tokenizer is not None:  # first, so that none of its files can replace ours
            save_tokenizer(tokenizer, tmp)
        _write_weights(tmp, split, tensors)
        _write_json(tmp / "config.json", config)
        generation_config = getattr(model, "generation_config", None)
        if generation_config is not None:
            generation_config.save_pretrained(tmp)
        if layout == "general":
            (tmp / MODELING_FILE).write_text(modeling_code)
        _write_records(tmp, pruning, evaluation, weights_dir=out.name)
        apply_umask(tmp)  # an ordinary folder of readable files, not mkdtemp's private ones
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _layout(
    model: PreTrainedModel, block_model: BlockModel, removed: set[Block], general: bool
) -> tuple[list[int], str, dict]:
    """The layers that stay, the layout ("plain" when only whole layers went and `general` does
    not ask otherwise) and the export's config.json for them."""
    kept_layers = [i for i in range(block_model.num_layers) if not set(layer_blocks(i)) <= removed]
    every_layer = layer_block_configs(block_model.num_layers, removed)
    block_configs = [every_layer[i] for i in kept_layers]
    whole_layers = all(not any(c[k]["no_op"] for k in c) for c in block_configs)
    if whole_layers and not general:
        return kept_layers, "plain", _plain_config(model, kept_layers)
    return kept_layers, "general", _pruned_config(model, kept_layers, block_configs)


def _check_shard_size(max_shard_size: object) -> None:
    if isinstance(max_shard_size, bool) or not isinstance(max_shard_size, (str, int)):
        raise UserError("max_shard_size", f"expected a size such as '2GB', got {max_shard_size!r}")
    if isinstance(max_shard_size, int) and max_shard_size <= 0:
        raise UserError("max_shard_size", f"must be positive, got {max_shard_size}")


def _write_records(tmp: Path, pruning: dict, evaluation: dict | None, weights_dir: str) -> None:
    """What the export says of itself: pruning.json, the model card, the plots, the report."""
    _write_json(tmp / PRUNING_FILE, pruning)
    card = render_model_card(pruning, weights_dir=weights_dir, evaluation=evaluation)
    (tmp / "README.md").write_text(card)
    (tmp / "pruning.svg").write_text(pruning_svg(pruning))
    if evaluation is not None:
        _write_json(tmp / REPORT_FILE, evaluation)
        (tmp / REPORT_PLOT).write_text(report_svg(evaluation))


def _default_source(model: PreTrainedModel) -> dict:
    name = getattr(model.config, "name_or_path", "")
    return {"model": name} if name else {}


def _parse_removed(block_model: BlockModel, removed: object) -> list[Block]:
    if not isinstance(removed, list):
        raise UserError("removed", f"expected a list of removed blocks, got {removed!r:.100}")
    blocks: list[Block] = []
    for k, entry in enumerate(removed):
        field = f"removed[{k}]"
        if not isinstance(entry, dict):
            raise UserError(field, f"expected {{'block', 'layer', 'ppl'}}, got {entry!r:.100}")
        try:
            block = Block.parse(entry)
            block_model.position(block)  # range check
        except UserError as err:
            raise UserError(field, err.message) from err
        if block in blocks:
            raise UserError(field, f"block {block} is listed twice")
        _check_number(f"{field}.ppl", entry.get("ppl"))
        blocks.append(block)
    return blocks


def _check_record(*, base_ppl: object, calibration: object, seed: object, source: object) -> None:
    _check_number("base_ppl", base_ppl)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UserError("seed", f"expected an integer, got {seed!r}")
    for field, value in (("calibration", calibration), ("source", source)):
        if value is None and field == "source":
            continue
        if not isinstance(value, dict):
            raise UserError(field, f"expected a dict, got {value!r:.100}")
        try:
            json.dumps(value)
        except (TypeError, ValueError) as err:
            raise UserError(field, f"must be JSON-serialisable: {err}") from err


def _check_number(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(field, f"expected a finite number, got {value!r}")


def _check_out_dir(out_dir: str | os.PathLike, overwrite: bool) -> Path:
    out = Path(out_dir).absolute()
    if out.exists():
        if not out.is_dir():
            raise UserError("out_dir", f"{out} exists and is not a directory")
        if any(out.iterdir()) and not overwrite:
            raise UserError(
                "out_dir",
                f"{out} exists and is not empty; choose another directory or overwrite it",
                code=ErrorCode.OUT_DIR_NOT_EMPTY,
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _kept_tensors(
    block_model: BlockModel, removed: set[Block], kept_layers: list[int]
) -> dict[str, torch.Tensor]:
    """The state dict to save: tied aliases and removed blocks left out, kept layers renumbered."""
    model = block_model.model
    module_names = {id(module): name for name, module in model.named_modules()}
    removed_prefixes = tuple(
        module_names[id(module)] + "." for b in removed for module in block_model.block_modules(b)
    )
    layers_name = module_names[id(block_model.layers)]  # "model.layers"
    layer_prefix = {f"{layers_name}.{i}.": f"{layers_name}.{j}." for j, i in enumerate(kept_layers)}
    tied = tied_names(model)
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name in tied or name.startswith(removed_prefixes):
            continue
        prefix = next((p for p in layer_prefix if name.startswith(p)), None)
        if prefix is not None:
            name = layer_prefix[prefix] + name[len(prefix) :]
        tensors[name] = tensor
    return tensors


def _plain_config(model: PreTrainedModel, kept_layers: list[int]) -> dict:
    """The base architecture's config for the kept layers: what a plain export loads as."""
    config = model.config.to_dict()
    for key in ("_name_or_path", "transformers_version", "auto_map"):
        config.pop(key, None)
    config.update(per_layer_fields(config, kept_layers))
    config["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    config["architectures"] = [type(model).__name__]
    return config


def _pruned_config(
    model: PreTrainedModel, kept_layers: list[int], block_configs: list[dict]
) -> dict:
    config = _plain_config(model, kept_layers)
    config["base_model_type"] = config["model_type"]
    config["model_type"] = MODEL_TYPE
    config["block_configs"] = block_configs
    config["architectures"] = ["BlockPrunedForCausalLM"]
    module = Path(MODELING_FILE).stem
    config["auto_map"] = {
        "AutoConfig": f"{module}.BlockPrunedConfig",
        "AutoModelForCausalLM": f"{module}.BlockPrunedForCausalLM",
    }
    return config


def _write_weights(directory: Path, split, tensors: dict[str, torch.Tensor]) -> None:
    for filename, names in split.filename_to_tensors.items():
        shard = {name: tensors[name].detach().cpu().contiguous() for name in names}
        save_file(shard, str(directory / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        _write_json(directory / WEIGHTS_INDEX_FILE, index)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished export into place; an existing `out` is swapped out, then deleted."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.with_name(f".{out.name}.{uuid.uuid4().hex}.old")
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
