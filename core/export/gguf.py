"""Write a BlockPrune export as one GGUF file that llama.cpp (so also ollama and LM Studio) runs.

llama.cpp has no "blockprune" architecture, but it runs NVIDIA's Nemotron-NAS models as `deci`:
a Llama whose layers each declare their own head count and feed-forward length, 0 meaning that
the block is absent. A block-pruned Llama is such a model, with three catches that come from what
llama.cpp's deci graph (src/models/deci.cpp) and hyperparameter loader do:

- attention removed: head_count 0 (and head_count_kv 0); the layer is its FFN on the residual.
  Not so in the first layer: llama.cpp takes the head size of every layer from layer 0's head
  count, and 0 there makes it 0 everywhere, so the kept attention blocks fail to load. There we
  write the "linear attention" form instead (heads > 0, kv heads 0: a norm, then one
  n_embd x n_embd matrix), with a zero matrix, which adds exactly 0.
- MLP removed: feed_forward_length 0 makes the graph skip the rest of the layer before the
  attention's residual add, so it would drop the kept attention's output (and in the last
  layer, abort on an unallocated buffer: both seen with llama.cpp). We write a zero FFN,
  `ZERO_FFN_WIDTH` wide (gate, up and down all zero: silu(0) * 0 = 0), which adds exactly 0.
- both removed: the layer is the identity. Our exports already drop such layers; a config that
  has one anyway is written without it.

Weights get llama.cpp's names (gguf's `TensorNameMap`), and the q and k rows are permuted from
transformers' rotate-half order to the interleaved pairs of llama.cpp's RoPE, as its converter
does. Tensors are streamed to the file: one at a time is in memory.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import gguf
import numpy as np
import torch
from safetensors import safe_open

from contract import ErrorCode, UserError
from core.export.gguf_vocab import read_vocab
from core.export.hf_modeling_template import block_config_flags
from core.export.modeling_code import (
    PRUNING_FILE,
    WEIGHTS_FILE,
    WEIGHTS_INDEX_FILE,
    read_export_config,
)

if TYPE_CHECKING:
    from transformers import PretrainedConfig

GGUF_TYPES = ("f16", "q8_0")
ARCH = gguf.MODEL_ARCH.DECI
# Llama-like decoders whose every weight the deci graph has (Qwen3's q/k norms it has not).
BASE_MODEL_TYPES = ("llama", "mistral", "qwen2")
ZERO_FFN_WIDTH = 32  # q8_0's block size: the zero FFN quantises like the other matrices
_FILE_TYPES = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
_Q = gguf.GGMLQuantizationType


@dataclass(frozen=True)
class Layer:
    """One layer of the GGUF file: which export layer it is and how its blocks are written."""

    source: int  # the layer's index in the export
    attention: Literal["kept", "absent", "zero"]  # zero: linear attention, a zero matrix
    ffn: bool  # False: a zero FFN ZERO_FFN_WIDTH wide


@dataclass(frozen=True)
class Tensor:
    name: str  # llama.cpp's
    shape: tuple[int, ...]  # transformers' order (out, in); GGUF stores it reversed
    qtype: gguf.GGMLQuantizationType
    load: Callable[[], np.ndarray]  # float32 values

    @property
    def nbytes(self) -> int:
        return int(np.prod(gguf.quant_shape_to_byte_shape(self.shape, self.qtype)))

    def data(self) -> np.ndarray:
        values = self.load()
        if self.qtype == _Q.Q8_0:
            return gguf.quants.quantize(values, _Q.Q8_0)
        return values.astype(np.float16 if self.qtype == _Q.F16 else np.float32)


def export_gguf(directory: str | os.PathLike, out_path: str | os.PathLike, gguf_type: str) -> Path:
    """Write the BlockPrune export in `directory` as one GGUF file at `out_path`, with its 2-D
    weights as `gguf_type` ("f16", or "q8_0" where a row is a multiple of 32 long, else f16) and
    the rest f32. The file appears complete or not at all. Returns its path."""
    if gguf_type not in GGUF_TYPES:
        raise UserError("type", f"expected one of {', '.join(GGUF_TYPES)}, got {gguf_type!r}")
    directory = Path(directory)
    config, flags = gguf_config(directory)
    layers = plan_layers(flags)
    vocab = read_vocab(directory, config.vocab_size)
    tensors = plan_tensors(config, layers, _Weights(directory), gguf_type)

    out = Path(out_path).absolute()
    if out.is_dir():
        raise UserError("out", f"{out} is a directory; name the .gguf file to write")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.partial")
    writer = gguf.GGUFWriter(tmp, arch=gguf.MODEL_ARCH_NAMES[ARCH])
    try:
        _add_hyperparameters(writer, config, layers, gguf_type, _model_name(directory))
        vocab.add_to(writer)
        for t in tensors:
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, t.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in tensors:
            writer.write_tensor_data(t.data())
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


def gguf_config(directory: Path) -> tuple[PretrainedConfig, list[tuple[bool, bool]]]:
    """The base architecture's transformers config of an export, and its per-layer
    (attention no-op, ffn no-op) flags (none in a plain export)."""
    from transformers import AutoConfig

    export = read_export_config(directory)
    if export.base_type not in BASE_MODEL_TYPES:
        raise UserError(
            "base_model_type",
            f"{export.base_type!r} cannot be written to GGUF; supported: "
            f"{', '.join(BASE_MODEL_TYPES)}",
            ErrorCode.UNSUPPORTED_ARCHITECTURE,
        )
    try:
        config = AutoConfig.for_model(export.base_type, **export.fields)
        if export.plain:
            flags = [(False, False)] * config.num_hidden_layers
        else:
            flags = block_config_flags(export.block_configs, config.num_hidden_layers)
    except (TypeError, ValueError) as err:
        raise UserError("config.json", str(err), ErrorCode.BAD_CONFIG) from err
    if getattr(config, "hidden_act", "silu") != "silu":
        raise UserError("config.json", f"hidden_act {config.hidden_act!r}: llama.cpp uses silu")
    return config, flags


def plan_layers(flags: list[tuple[bool, bool]]) -> list[Layer]:
    """How each layer is written (see the module's docstring), layers with both blocks removed
    left out."""
    layers: list[Layer] = []
    for source, (attention_removed, ffn_removed) in enumerate(flags):
        if attention_removed and ffn_removed:
            continue
        if not attention_removed:
            layers.append(Layer(source, "kept", not ffn_removed))
        else:  # 0 heads, except where llama.cpp reads the head size: layer 0
            layers.append(Layer(source, "absent" if layers else "zero", not ffn_removed))
    return layers


def plan_tensors(
    config: PretrainedConfig, layers: list[Layer], weights: _Weights, gguf_type: str
) -> list[Tensor]:
    """Every tensor of the GGUF file, in writing order, checked against what llama.cpp loads."""
    n_embd = config.hidden_size
    name_map = gguf.get_tensor_name_map(ARCH, len(layers))
    index = {layer.source: i for i, layer in enumerate(layers)}
    tensors: list[Tensor] = []

    def add(name: str, shape: tuple[int, ...], load: Callable[[], np.ndarray]) -> None:
        tensors.append(Tensor(name, shape, _tensor_type(shape, gguf_type), load))

    for hf_name in weights.names:
        gguf_name = name_map.get_name(
            _renumbered(hf_name, index), try_suffixes=(".weight", ".bias")
        )
        if gguf_name is None:
            raise UserError("weights", f"{hf_name} has no place in llama.cpp's {ARCH.name} model")
        load = weights.loader(hf_name)
        if ".q_proj." in hf_name:  # rotate-half pairs -> interleaved pairs
            load = _permuted(load, config.num_attention_heads)
        elif ".k_proj." in hf_name:
            load = _permuted(load, config.num_key_value_heads)
        add(gguf_name, weights.shape(hf_name), load)

    # the stand-ins for removed blocks that llama.cpp cannot do without: (part, shape, value)
    width = ZERO_FFN_WIDTH
    for i, layer in enumerate(layers):
        stand_ins: list[tuple[str, tuple[int, ...], float]] = []
        if layer.attention == "zero":
            stand_ins += [("attn_norm", (n_embd,), 1.0), ("attn_output", (n_embd, n_embd), 0.0)]
        if not layer.ffn:
            stand_ins += [("ffn_norm", (n_embd,), 1.0), ("ffn_gate", (width, n_embd), 0.0)]
            stand_ins += [("ffn_up", (width, n_embd), 0.0), ("ffn_down", (n_embd, width), 0.0)]
        for part, shape, value in stand_ins:
            add(f"blk.{i}.{part}.weight", shape, _filled(value, shape))
    factors = _rope_factors(config)
    if factors is not None:
        add("rope_freqs.weight", factors.shape, lambda: factors)
    _check_complete(tensors, layers, config)
    return tensors


def _check_complete(tensors: list[Tensor], layers: list[Layer], config: PretrainedConfig) -> None:
    """The tensors are exactly those llama.cpp's deci loader asks for (it refuses extra ones),
    biases aside, which it takes when present."""
    names = {t.name for t in tensors}
    required = {"token_embd.weight", "output_norm.weight"}
    if not getattr(config, "tie_word_embeddings", False):
        required.add("output.weight")
    for i, layer in enumerate(layers):
        parts = ["ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
        if layer.attention != "absent":
            parts += ["attn_norm", "attn_output"]
        if layer.attention == "kept":
            parts += ["attn_q", "attn_k", "attn_v"]
        required |= {f"blk.{i}.{part}.weight" for part in parts}
    missing = sorted(required - names)
    extra = sorted(n for n in names - required if not n.endswith(".bias") and "rope_freqs" not in n)
    if missing or extra:
        raise UserError(
            "weights",
            f"do not match block_configs: missing {missing[:5]}, unexpected {extra[:5]}",
            ErrorCode.MISSING_WEIGHTS if missing else ErrorCode.BAD_CONFIG,
        )


def _add_hyperparameters(
    writer: gguf.GGUFWriter,
    config: PretrainedConfig,
    layers: list[Layer],
    gguf_type: str,
    name: str,
) -> None:
    head_dim = _head_dim(config)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(len(layers))
    writer.add_feed_forward_length(
        [config.intermediate_size if layer.ffn else ZERO_FFN_WIDTH for layer in layers]
    )
    writer.add_head_count(
        [0 if layer.attention == "absent" else config.num_attention_heads for layer in layers]
    )
    writer.add_head_count_kv(
        [config.num_key_value_heads if layer.attention == "kept" else 0 for layer in layers]
    )
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    rope = _rope_parameters(config)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(_FILE_TYPES[gguf_type])
    if gguf_type != "f16":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _rope_parameters(config: PretrainedConfig) -> dict:
    """The RoPE settings of a transformers 5 (`rope_parameters`) or 4 (`rope_theta`,
    `rope_scaling`) config, with `rope_type` always set."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if not params:
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type", params.get("type")) or "default"
    if params["rope_type"] not in ("default", "linear", "llama3"):
        raise UserError(
            "config.json",
            f"rope type {params['rope_type']!r}: the GGUF export writes default, linear and "
            "llama3 RoPE only",
            ErrorCode.BAD_CONFIG,
        )
    return params


def _rope_factors(config: PretrainedConfig) -> np.ndarray | None:
    """llama3 RoPE as llama.cpp takes it: a factor per frequency that divides the default
    frequency (the `rope_freqs` tensor), here the ratio of transformers' own frequencies."""
    rope = _rope_parameters(config)
    if rope["rope_type"] != "llama3":
        return None
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    dim = _head_dim(config)
    theta = float(rope.get("rope_theta", 10000.0))
    default = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    return (default / scaled.double()).float().numpy()


def _head_dim(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _tensor_type(shape: tuple[int, ...], gguf_type: str) -> gguf.GGMLQuantizationType:
    if len(shape) < 2:
        return _Q.F32  # norms, biases, RoPE factors: small, and llama.cpp wants them f32
    if gguf_type == "q8_0" and shape[-1] % gguf.GGML_QUANT_SIZES[_Q.Q8_0][0] == 0:
        return _Q.Q8_0
    return _Q.F16


def _renumbered(hf_name: str, index: dict[int, int]) -> str:
    match = re.match(r"model\.layers\.(\d+)\.(.*)", hf_name)
    if match is None:
        return hf_name
    source = int(match.group(1))
    if source not in index:
        raise UserError("weights", f"{hf_name} belongs to a layer whose blocks are both removed")
    return f"model.layers.{index[source]}.{match.group(2)}"


def _permuted(load: Callable[[], np.ndarray], n_head: int) -> Callable[[], np.ndarray]:
    """transformers rotates pairs (i, i + head_dim/2) of each head, llama.cpp pairs (2i, 2i+1):
    reorder each head's rows [0, d/2, 1, d/2+1, ...] so that both compute the same."""

    def permuted() -> np.ndarray:
        w = load()
        heads = w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        return heads.swapaxes(1, 2).reshape(w.shape)

    return permuted


def _filled(value: float, shape: tuple[int, ...]) -> Callable[[], np.ndarray]:
    return lambda: np.full(shape, value, dtype=np.float32)


def _model_name(directory: Path) -> str:
    try:
        base = json.loads((directory / PRUNING_FILE).read_text())["base_model"]["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return directory.name
    return f"{base} (BlockPrune: {directory.name})"


class _Weights:
    """The export's safetensors tensors by name, read one at a time."""

    def __init__(self, directory: Path) -> None:
        index = directory / WEIGHTS_INDEX_FILE
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map")
            if not isinstance(weight_map, dict):
                raise UserError(WEIGHTS_INDEX_FILE, "has no weight_map", ErrorCode.MISSING_WEIGHTS)
            files = {name: directory / Path(file).name for name, file in weight_map.items()}
        else:
            path = directory / WEIGHTS_FILE
            if not path.is_file():
                raise UserError("weights", f"{path} is missing", ErrorCode.MISSING_WEIGHTS)
            with safe_open(str(path), framework="pt") as f:
                files = dict.fromkeys(f.keys(), path)
        for path in set(files.values()):
            if not path.is_file():
                raise UserError("weights", f"{path} is missing", ErrorCode.MISSING_WEIGHTS)
        self.names = list(files)
        self._files = files
        self._open = {path: safe_open(str(path), framework="pt") for path in set(files.values())}

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._open[self._files[name]].get_slice(name).get_shape())

    def loader(self, name: str) -> Callable[[], np.ndarray]:
        return lambda: self._open[self._files[name]].get_tensor(name).float().numpy()
