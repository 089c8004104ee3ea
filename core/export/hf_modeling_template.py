"""Modeling code for a block-pruned Llama-family causal LM (written by BlockPrune's export).

The model is the base architecture with some residual blocks made no-ops, described per layer by
`config.block_configs`, a list of ``{"attention": {"no_op": bool}, "ffn": {"no_op": bool}}``
(the convention of NVIDIA's Nemotron-NAS and vLLM's heterogeneous-model loaders):

- a no-op attention block returns zeros and its `input_layernorm` is the identity, so the layer
  adds exactly nothing to the residual stream (h + 0 == h) and stores nothing in the KV cache;
- a no-op ffn block does the same with `mlp` and `post_attention_layernorm`.

Kept blocks keep their module names, so weights load under the base model's parameter names.

This file is a real module of the `core` package (its loader uses `apply_block_configs`), and the
template of the `modeling_blockprune.py` that an export writes next to the weights: the export
rewrites the lines between the BASE IMPORTS markers for the base architecture. Everything else must
stay self-contained (only torch and transformers imports), since it runs as Hub remote code.
"""

from typing import Any

import torch
from torch import nn

# BEGIN BASE IMPORTS
from transformers.models.llama.configuration_llama import LlamaConfig as BaseConfig
from transformers.models.llama.modeling_llama import LlamaForCausalLM as BaseForCausalLM

BASE_MODEL_TYPE = "llama"
# END BASE IMPORTS

try:  # transformers >= 5
    from transformers.cache_utils import DummyLayer as _DummyLayer

    DUMMY_CACHE_LAYER: type | None = _DummyLayer
except ImportError:  # pragma: no cover - older transformers: no-op layers keep an unused slot
    DUMMY_CACHE_LAYER = None

BLOCK_KEYS = ("attention", "ffn")


def block_config_flags(block_configs: object, num_layers: int) -> list[tuple[bool, bool]]:
    """Validate `block_configs` against the model's layer count; return (attention, ffn) no-op
    flags per layer. Raises ValueError naming the field and the problem."""
    if not isinstance(block_configs, list) or len(block_configs) != num_layers:
        raise ValueError(
            f"block_configs: expected a list of {num_layers} entries (one per layer), "
            f"got {block_configs!r:.200}"
        )
    flags = []
    for i, entry in enumerate(block_configs):
        try:
            pair = tuple(entry[key]["no_op"] for key in BLOCK_KEYS)
        except (KeyError, TypeError):
            pair = None
        if pair is None or not all(isinstance(flag, bool) for flag in pair):
            raise ValueError(
                f"block_configs[{i}]: expected "
                f'{{"attention": {{"no_op": bool}}, "ffn": {{"no_op": bool}}}}, got {entry!r:.200}'
            )
        flags.append(pair)
    return flags


def _release_cache_slot(cache: object, layer_idx: int) -> None:
    """Make this layer's KV-cache slot a DummyLayer, which transformers skips when it measures the
    cached length (for positions and masks), so a removed attention block costs no cache memory."""
    layers = getattr(cache, "layers", None)
    if DUMMY_CACHE_LAYER is None or not isinstance(layers, list):
        return
    replicate = getattr(cache, "layer_class_to_replicate", None)
    while replicate is not None and len(layers) <= layer_idx:  # lazily grown DynamicCache
        layers.append(replicate())
    if layer_idx < len(layers) and not isinstance(layers[layer_idx], DUMMY_CACHE_LAYER):
        layers[layer_idx] = DUMMY_CACHE_LAYER()


class NoOpAttention(nn.Module):
    """Stands in for a removed self-attention block: its branch adds zeros to the residual."""

    def __init__(self, layer_idx: int, release_cache_slot: bool) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        # With no attention left anywhere, every slot stays an (empty) attention slot, because
        # transformers needs at least one to measure the cache length.
        self.release_cache_slot = release_cache_slot

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, None]:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and self.release_cache_slot:
            _release_cache_slot(cache, self.layer_idx)
        return torch.zeros_like(hidden_states), None


class NoOpMLP(nn.Module):
    """Stands in for a removed MLP block: its branch adds zeros to the residual."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


def apply_block_configs(model: Any, block_configs: object) -> None:
    """Replace the no-op blocks of a base-architecture causal LM in place."""
    layers = model.model.layers
    flags = block_config_flags(block_configs, len(layers))
    any_attention_kept = not all(attention_no_op for attention_no_op, _ in flags)
    for idx, (layer, (attention_no_op, ffn_no_op)) in enumerate(zip(layers, flags, strict=True)):
        if attention_no_op:
            layer.self_attn = NoOpAttention(idx, release_cache_slot=any_attention_kept)
            layer.input_layernorm = nn.Identity()
        if ffn_no_op:
            layer.mlp = NoOpMLP()
            layer.post_attention_layernorm = nn.Identity()


class BlockPrunedConfig(BaseConfig):
    """The base architecture's config plus `block_configs`; a model type of its own, so that
    transformers without this code refuses the checkpoint instead of loading it wrongly."""

    model_type = "blockprune"
    block_configs: list | None = None
    base_model_type: str | None = None


class BlockPrunedForCausalLM(BaseForCausalLM):
    config_class = BlockPrunedConfig

    def __init__(self, config: BlockPrunedConfig) -> None:
        super().__init__(config)
        apply_block_configs(self, config.block_configs)
