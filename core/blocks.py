"""A decoder seen as a chain of residual blocks.

Layer i of a decoder is two blocks, each a residual branch (in a pre-norm family such as Llama;
core.families has where each family keeps a block's norms):

    ("mha", i):  h = h + self_attn(input_layernorm(h))
    ("mlp", i):  h = h + mlp(post_attention_layernorm(h))

Removing a block skips its branch, so its output is its input (the residual). Blocks are
numbered by *position* in forward order: position 2*i is ("mha", i), 2*i + 1 is ("mlp", i);
position 2*L stands for the final hidden state. `BlockModel.run` starts at any position, which is
what lets the search restart a candidate from cached activations instead of from the embeddings.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from contract import BLOCK_KINDS, BLOCK_TYPES, ErrorCode, UserError
from contract.blocks import Block
from contract.memory import LOGITS_CHUNK_BYTES
from core.families import SUPPORTED_MODEL_TYPES, WINDOW_ON_EVERY_LAYER, Family, family_of

__all__ = ["SUPPORTED_MODEL_TYPES", "BlockModel", "check_architecture"]


def check_architecture(model: nn.Module) -> Family:
    """The family of `model`; a clear error for anything that is not a supported decoder with
    its family's layer parts."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    family = family_of(model_type)
    layers = getattr(getattr(model, "model", None), "layers", None)
    parts = family.attention.names + family.mlp.names
    if (
        layers is None
        or not all(hasattr(layer, p) for layer in layers for p in parts)
        or not hasattr(model.model, "rotary_emb")
    ):
        raise UserError(
            "model",
            f"a {model_type} model whose layers lack {', '.join(parts)}: not a layout that "
            "BlockPrune knows",
            code=ErrorCode.UNSUPPORTED_ARCHITECTURE,
        )
    return family


class BlockModel:
    """Runs a Hugging Face decoder (core.families) block by block, with any set of blocks
    removed."""

    def __init__(self, model: nn.Module) -> None:
        self.family = check_architecture(model)
        # Any: transformers' module attributes (model.model.layers, config) are untyped for mypy
        hf: Any = model
        self.model: Any = hf.eval()
        self.config: Any = hf.config
        self.layers: Any = hf.model.layers
        self.num_layers = len(self.layers)
        self.num_positions = 2 * self.num_layers
        # Where each position's layer lives: a model may be spread over several devices, and a
        # hidden state moves to the next layer's device as it goes (accelerate-style placement).
        self._devices = [_device_of(self.layers[p // 2]) for p in range(self.num_positions)]
        self._masks: dict[tuple, torch.Tensor] = {}
        self._rope: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    # ---- blocks and their sizes -------------------------------------------------------------
    def position(self, block: Block) -> int:
        if not 0 <= block.layer < self.num_layers:
            raise UserError("block", f"layer {block.layer} out of range 0..{self.num_layers - 1}")
        return block.position

    def candidates(self, block_types: str = "mix") -> list[Block]:
        """The paper's candidate order: every MHA block by layer, then every MLP block by layer."""
        if block_types not in BLOCK_TYPES:
            raise UserError("block_types", f"must be mix, mha or mlp, got {block_types!r}")
        kinds = BLOCK_KINDS if block_types == "mix" else (block_types,)
        return [Block(kind=k, layer=i) for k in kinds for i in range(self.num_layers)]

    def block_modules(self, block: Block) -> tuple[Any, ...]:
        """The block's branch, then its norms (one, or two around a sandwich)."""
        layer = self.layers[block.layer]
        return tuple(getattr(layer, name) for name in self.family.parts(block.kind).names)

    def branch(self, block: Block) -> Any:
        """The block's branch module: its attention or its MLP (a sparse block in a MoE)."""
        return getattr(self.layers[block.layer], self.family.parts(block.kind).branch)

    def block_params(self, block: Block) -> int:
        return sum(p.numel() for m in self.block_modules(block) for p in m.parameters())

    def total_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())  # tied weights count once

    @property
    def device(self) -> torch.device:
        """Where the embeddings are: the first device of the model."""
        return self.model.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.model.embed_tokens.weight.dtype

    def device_at(self, position: int) -> torch.device:
        """The device of the layer of `position` (2L: the final norm's)."""
        if position == self.num_positions:
            return _device_of(self.model.model.norm)
        return self._devices[position]

    # ---- forward pieces ---------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeddings = self.model.model.embed_tokens
        h = embeddings(input_ids)
        if self.family.scale_embeddings and not hasattr(embeddings, "embed_scale"):
            # Gemma 2 in transformers 4: the model's forward scales, in the embeddings' dtype
            h = h * torch.tensor(self.config.hidden_size**0.5, dtype=h.dtype)
        return h

    def _sliding_window(self, layer: int) -> int | None:
        window = getattr(self.config, "sliding_window", None)
        layer_types = getattr(self.config, "layer_types", None)
        if layer_types is not None:
            return window if layer_types[layer] == "sliding_attention" else None
        if self.config.model_type in WINDOW_ON_EVERY_LAYER:
            return window
        return None

    def _mask(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """Additive causal mask (sliding where the layer slides); works for eager and sdpa."""
        seq_len, window = h.shape[1], self._sliding_window(layer)
        key = (seq_len, window, h.device, h.dtype)
        if key not in self._masks:
            i = torch.arange(seq_len, device=h.device)
            allowed = i[None, :] <= i[:, None]
            if window is not None:
                allowed &= i[:, None] - i[None, :] < window
            mask = torch.full((seq_len, seq_len), torch.finfo(h.dtype).min, dtype=h.dtype)
            self._masks[key] = mask.to(h.device).masked_fill(allowed, 0.0)[None, None]
        return self._masks[key]

    def _rotary(self, h: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotary embedding of `layer`: one for the model, or (Gemma 3) one per layer type,
        as a second module in transformers 4 and as an argument in 5."""
        layer_types = getattr(self.config, "layer_types", None)
        layer_type = layer_types[layer] if layer_types is not None else None
        rotary = self.model.model.rotary_emb  # on the first device of a spread model
        local = getattr(self.model.model, "rotary_emb_local", None)
        if local is not None and layer_type == "sliding_attention":
            rotary = local
        by_type = "layer_type" in inspect.signature(rotary.forward).parameters
        key = (h.shape[1], h.device, h.dtype, id(rotary), layer_type if by_type else None)
        if key not in self._rope:
            at = next(rotary.buffers()).device
            args = (layer_type,) if by_type else ()
            cos, sin = rotary(h.to(at), torch.arange(h.shape[1], device=at)[None], *args)
            self._rope[key] = (cos.to(h.device), sin.to(h.device))
        return self._rope[key]

    def run_block(self, position: int, h: torch.Tensor) -> torch.Tensor:
        block = Block.at(position)
        parts = self.family.parts(block.kind)
        layer = self.layers[block.layer]
        h = h.to(self._devices[position])  # a no-op unless the model spans devices
        x = getattr(layer, parts.pre)(h) if parts.pre is not None else h
        branch = getattr(layer, parts.branch)
        if block.kind == "mlp":
            out = branch(x)
        else:
            out = branch(
                hidden_states=x,
                position_embeddings=self._rotary(h, block.layer),
                attention_mask=self._mask(h, block.layer),
            )
        if isinstance(out, tuple):  # attention's (output, weights); transformers 4's MoE's
            out = out[0]
        if parts.post is not None:
            out = getattr(layer, parts.post)(out)
        return h + out

    @torch.inference_mode()
    def run(
        self,
        h: torch.Tensor,
        start: int,
        skip: Iterable[int] = (),
        record: dict[int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Run positions start..2L-1 on hidden state `h` (the input of `start`), skipping the
        positions in `skip`. With `record`, store the input of every position start+1..2L."""
        skip = set(skip)
        for pos in range(start, self.num_positions):
            if pos not in skip:
                h = self.run_block(pos, h)
            if record is not None:
                record[pos + 1] = h
        return h

    @torch.inference_mode()
    def logits(self, h: torch.Tensor) -> torch.Tensor:
        h = self.model.model.norm(h.to(self.device_at(self.num_positions)))
        logits = self.model.lm_head(h.to(_device_of(self.model.lm_head)))
        cap = getattr(self.config, "final_logit_softcapping", None)  # Gemma 2
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    @torch.inference_mode()
    def sequence_nll(self, h: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Each sequence's mean next-token NLL (fp32), from the final hidden state `h`."""
        n, t = input_ids.shape
        vocab = self.model.lm_head.out_features
        step = max(1, LOGITS_CHUNK_BYTES // (t * vocab * 4))
        out = []
        for s in range(0, n, step):
            # The last position predicts nothing: leave it out before the (costly) lm_head, and
            # keep logits contiguous as [tokens, vocab] so cross_entropy needs no transpose copy.
            logits = self.logits(h[s : s + step, :-1]).float()
            targets = input_ids[s : s + step, 1:].to(logits.device)
            nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
            out.append(nll.view(targets.shape).mean(dim=1))
        return torch.cat(out)

    @torch.inference_mode()
    def forward_logits(
        self, input_ids: torch.Tensor, removed: Iterable[Block] = ()
    ) -> torch.Tensor:
        """Logits of the model with `removed` blocks taken out (the in-memory pruned model)."""
        skip = [self.position(b) for b in removed]
        return self.logits(self.run(self.embed(input_ids), 0, skip))


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device
