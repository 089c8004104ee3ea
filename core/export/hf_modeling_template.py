"""Modeling code for a block-pruned decoder causal LM (written by BlockPrune's export).

The model is the base architecture with some residual blocks made no-ops, described per layer by
`config.block_configs`, a list of ``{"attention": {"no_op": bool}, "ffn": {"no_op": bool}}``
(the convention of NVIDIA's Nemotron-NAS and vLLM's heterogeneous-model loaders):

- a no-op attention block returns zeros and its norms (`input_layernorm` in a pre-norm family;
  BLOCK_PARTS has the names) are the identity, so the layer adds exactly nothing to the residual
  stream (h + 0 == h) and stores nothing in the KV cache (its slot only counts the tokens, see
  `_track_length`);
- a no-op ffn block does the same with `mlp` and its norms.

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
# Each block's branch, then its norms, by attribute name in a decoder layer (core.families)
BLOCK_PARTS = {
    "attention": ("self_attn", "input_layernorm"),
    "ffn": ("mlp", "post_attention_layernorm"),
}
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

    # What some decoder layers read off their attention (Gemma 3 in transformers 4 picks its
    # rotary embedding by `is_sliding`): kept from the attention it stands in for.
    COPIED = ("is_sliding", "sliding_window", "attention_type", "layer_type")

    def __init__(self, layer_idx: int, replaced: Any = None) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        for name in self.COPIED:
            if hasattr(replaced, name):
                setattr(self, name, getattr(replaced, name))

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, None]:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None:
            _track_length(cache, self.layer_idx, hidden_states)
        return torch.zeros_like(hidden_states), None


class NoOpMLP(nn.Module):
    """Stands in for a removed MLP block: its branch adds zeros to the residual."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


def apply_block_configs(model: Any, block_configs: object, parts: dict | None = None) -> None:
    """Replace the no-op blocks of a base-architecture causal LM in place: each no-op block's
    branch by a no-op module and its norms by the identity. `parts`: BLOCK_PARTS's shape, for
    the model's family (default: this file's)."""
    parts = parts or BLOCK_PARTS
    layers = model.model.layers
    flags = block_config_flags(block_configs, len(layers))
    for idx, (layer, no_ops) in enumerate(zip(layers, flags, strict=True)):
        for key, no_op in zip(BLOCK_KEYS, no_ops, strict=True):
            if no_op:
                branch, *norms = parts[key]
                old = getattr(layer, branch)
                setattr(layer, branch, NoOpAttention(idx, old) if key == "attention" else NoOpMLP())
                for norm in norms:
                    setattr(layer, norm, nn.Identity())


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
