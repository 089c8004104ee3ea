"""Export a block-pruned model as a directory that loads, and load it back without remote code.

An export directory holds the kept weights (`model.safetensors`, or shards plus the standard
`model.safetensors.index.json`), a `config.json` of model type "blockprune" that keeps the base
architecture's fields and describes each kept layer in `block_configs`, the modeling code
(`modeling_blockprune.py`, rendered from `core/hf_modeling_template.py`) that lets stock
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
from safetensors.torch import load_file, save_file

import core
from core import hf_modeling_template
from core.blocks import SUPPORTED_MODEL_TYPES, Block, BlockModel
from core.errors import UserError
from core.hf_modeling_template import (
    NoOpAttention,
    NoOpMLP,
    apply_block_configs,
    block_config_flags,
)
from core.model_card import render_model_card
from core.plot import pruning_svg

if TYPE_CHECKING:
    from transformers import PreTrainedModel

MODELING_FILE = "modeling_blockprune.py"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
PRUNING_FILE = "pruning.json"
MODEL_TYPE = "blockprune"
_BASE_IMPORTS = ("# BEGIN BASE IMPORTS\n", "# END BASE IMPORTS\n")
# config.json keys that belong to the pruned wrapper, not to the base architecture
_WRAPPER_KEYS = ("model_type", "base_model_type", "block_configs", "auto_map", "architectures")


# ---- export -------------------------------------------------------------------------------
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
) -> Path:
    """Write the original (unpruned) `model` with the `removed` blocks taken out to `out_dir`.

    `removed` lists `{"block": "mha"|"mlp", "layer": i, "ppl": PPL after removing it}` in removal
    order; `source` describes the base model (e.g. `{"model": "org/name", "revision": ...}`).
    The directory appears complete or not at all; an existing non-empty one is refused unless
    `overwrite`. Returns the directory's path."""
    block_model = BlockModel(model)
    if any(isinstance(m, (NoOpAttention, NoOpMLP)) for m in model.modules()):
        raise UserError("model", "is already pruned; export from the original model")
    blocks = _parse_removed(block_model, removed)
    _check_record(base_ppl=base_ppl, calibration=calibration, seed=seed, source=source)
    if isinstance(max_shard_size, bool) or not isinstance(max_shard_size, (str, int)):
        raise UserError("max_shard_size", f"expected a size such as '2GB', got {max_shard_size!r}")
    if isinstance(max_shard_size, int) and max_shard_size <= 0:
        raise UserError("max_shard_size", f"must be positive, got {max_shard_size}")
    modeling_code = render_modeling_code(model)
    out = _check_out_dir(out_dir, overwrite)

    removed_set = set(blocks)
    kept_layers = [
        i
        for i in range(block_model.num_layers)
        if not {Block("mha", i), Block("mlp", i)} <= removed_set
    ]
    block_configs = [
        {
            "attention": {"no_op": Block("mha", i) in removed_set},
            "ffn": {"no_op": Block("mlp", i) in removed_set},
        }
        for i in kept_layers
    ]
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
        "base_model": source if source is not None else _default_source(model),
        "base_model_type": model.config.model_type,
        "base_ppl": float(base_ppl),
        "final_ppl": float(removed[-1]["ppl"]) if removed else float(base_ppl),
        "removed": [
            {**b.to_json(), "ppl": float(r["ppl"])} for b, r in zip(blocks, removed, strict=True)
        ],
        "params_before": params_before,
        "params_after": params_before - sum(block_model.block_params(b) for b in blocks),
        "num_layers_before": block_model.num_layers,
        "kept_layers": kept_layers,
        "calibration": calibration,
        "seed": seed,
    }
    config = _pruned_config(model, kept_layers, block_configs)

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the export is an ordinary directory
        if tokenizer is not None:  # first, so that none of its files can replace ours
            tokenizer.save_pretrained(tmp)
        _write_weights(tmp, split, tensors)
        _write_json(tmp / "config.json", config)
        generation_config = getattr(model, "generation_config", None)
        if generation_config is not None:
            generation_config.save_pretrained(tmp)
        (tmp / MODELING_FILE).write_text(modeling_code)
        _write_json(tmp / PRUNING_FILE, pruning)
        (tmp / "README.md").write_text(render_model_card(pruning, weights_dir=out.name))
        (tmp / "pruning.svg").write_text(pruning_svg(pruning))
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def render_modeling_code(model: PreTrainedModel) -> str:
    """The template's source with its base imports rewritten for `model`'s architecture."""
    model_cls, config_cls = type(model), type(model.config)
    for cls in (model_cls, config_cls):
        if not cls.__module__.startswith("transformers.models."):
            raise UserError(
                "model",
                f"{cls.__module__}.{cls.__name__} is not a transformers class; the exported "
                "modeling code can only build on stock transformers architectures",
                code="unsupported_architecture",
            )
    source = Path(hf_modeling_template.__file__).read_text()
    begin, end = _BASE_IMPORTS
    head, rest = source.split(begin, 1)
    _, tail = rest.split(end, 1)
    imports = (
        f"from {config_cls.__module__} import {config_cls.__name__} as BaseConfig\n"
        f"from {model_cls.__module__} import {model_cls.__name__} as BaseForCausalLM\n\n"
        f"BASE_MODEL_TYPE = {model.config.model_type!r}\n"
    )
    banner = f"# Generated by BlockPrune {core.__version__} from core/hf_modeling_template.py.\n"
    return banner + head + begin + imports + end + tail


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
            block = Block.from_json(entry)
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
                code="out_dir_not_empty",
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _tied_names(model: torch.nn.Module) -> set[str]:
    """Parameter names that alias an earlier parameter (e.g. a tied `lm_head.weight`)."""
    every = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return every - {name for name, _ in model.named_parameters()}


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
    tied = _tied_names(model)
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name in tied or name.startswith(removed_prefixes):
            continue
        prefix = next((p for p in layer_prefix if name.startswith(p)), None)
        if prefix is not None:
            name = layer_prefix[prefix] + name[len(prefix) :]
        tensors[name] = tensor
    return tensors


def _pruned_config(
    model: PreTrainedModel, kept_layers: list[int], block_configs: list[dict]
) -> dict:
    config = model.config.to_dict()
    for key in ("_name_or_path", "transformers_version"):
        config.pop(key, None)
    config["base_model_type"] = config["model_type"]
    config["model_type"] = MODEL_TYPE
    config["num_hidden_layers"] = len(kept_layers)
    if config.get("layer_types") is not None:
        config["layer_types"] = [config["layer_types"][i] for i in kept_layers]
    config["block_configs"] = block_configs
    config["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
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


# ---- loading without remote code ----------------------------------------------------------
def load_pruned(
    directory: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> PreTrainedModel:
    """Load an export as the stock transformers class of its base architecture, with the same
    no-op blocks as its modeling code, and every stored weight loaded (missing or unexpected
    weights are an error). Runs no code from the directory and never unpickles."""
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = Path(directory)
    fields = _read_json(directory / "config.json", "config.json")
    if fields.get("model_type") != MODEL_TYPE:
        raise UserError(
            "config.json",
            f"model_type is {fields.get('model_type')!r}: not a BlockPrune export",
        )
    base_type, block_configs = fields.get("base_model_type"), fields.get("block_configs")
    if base_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(
            "config.json", f"base_model_type {base_type!r} is not one of {SUPPORTED_MODEL_TYPES}"
        )
    for key in _WRAPPER_KEYS + ("transformers_version",):
        fields.pop(key, None)
    try:
        base_config = AutoConfig.for_model(base_type, **fields)
        block_config_flags(block_configs, base_config.num_hidden_layers)
    except (TypeError, ValueError) as err:
        raise UserError("config.json", str(err)) from err
    if dtype is None:
        dtype = base_config.dtype if isinstance(base_config.dtype, torch.dtype) else torch.float32

    with _no_init_weights(), torch.device(device):
        model = AutoModelForCausalLM.from_config(base_config, dtype=dtype)
    if getattr(base_config, "tie_word_embeddings", False):
        model.tie_weights()
    apply_block_configs(model, block_configs)
    _load_weights_strictly(model, directory, device)
    return model.eval()


def _load_weights_strictly(
    model: PreTrainedModel, directory: Path, device: str | torch.device
) -> None:
    index_path = directory / WEIGHTS_INDEX_FILE
    if index_path.exists():
        weight_map = _read_json(index_path, WEIGHTS_INDEX_FILE).get("weight_map")
        if not isinstance(weight_map, dict):
            raise UserError(WEIGHTS_INDEX_FILE, "has no weight_map")
        files = sorted(set(weight_map.values()))
    else:
        files = [WEIGHTS_FILE]
    expected = set(model.state_dict()) - _tied_names(model)
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


def _read_json(path: Path, field: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise UserError(field, f"{path} does not exist") from err
    except json.JSONDecodeError as err:
        raise UserError(field, f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise UserError(field, f"{path} does not hold a JSON object")
    return data


def _no_init_weights():
    """Skip random initialisation of weights that are about to be loaded (a large model's random
    init costs more than its loading)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers < 5
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()
