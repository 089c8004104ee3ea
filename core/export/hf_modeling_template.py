"""Modeling code for a block-pruned Llama-family causal LM (written by BlockPrune's export).

The model is the base architecture with some residual blocks made no-ops, described per layer by
`config.block_configs`, a list of ``{"attention": {"no_op": bool}, "ffn": {"no_op": bool}}``
(the convention of NVIDIA's Nemotron-NAS and vLLM's heterogeneous-model loaders):

- a no-op attention block returns zeros and its `input_layernorm` is the identity, so the layer
  adds exactly nothing to the residual stream (h + 0 == h) and stores nothing in the KV cache
  (its slot only counts the tokens, see `_track_length`);
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


def _track_length(cache: Any, layer_idx: int, hidden_states: torch.Tensor) -> None:
    """Advance this layer's KV-cache slot by the new tokens, storing one zero per token.

    transformers measures the cached length (positions, mask sizes) on whichever layer it picks,
    often layer 0 or the first full or sliding one, and that may be a removed attention. A slot
    that is never written reports length 0 there; a slot swapped for another class breaks when a
    release changes which methods that class has (transformers 5.25: `DummyLayer` has no
    `get_seq_length`); an empty head dimension counts as no tokens at all. Writing keys and values
    of one head of size 1 keeps every slot an ordinary one of its own kind (full, sliding, static)
    with the right length, through the one `update` that every cache and every release has: one
    number per token for keys and one for values, where a kept attention stores
    2 x heads x head_dim."""
    batch, length = hidden_states.shape[:2]
    zeros = hidden_states.new_zeros((batch, 1, length, 1))
    cache.update(zeros, zeros, layer_idx)


class NoOpAttention(nn.Module):
    """Stands in for a removed self-attention block: its branch adds zeros to the residual."""

    def __init__(self, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, None]:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None:
            _track_length(cache, self.layer_idx, hidden_states)
        return torch.zeros_like(hidden_states), None


class NoOpMLP(nn.Module):
    """Stands in for a removed MLP block: its branch adds zeros to the residual."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


def apply_block_configs(model: Any, block_configs: object) -> None:
    """Replace the no-op blocks of a base-architecture causal LM in place."""
    layers = model.model.layers
    flags = block_config_flags(block_configs, len(layers))
    for idx, (layer, (attention_no_op, ffn_no_op)) in enumerate(zip(layers, flags, strict=True)):
        if attention_no_op:
            layer.self_attn = NoOpAttention(idx)
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
