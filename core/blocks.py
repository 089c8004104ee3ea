"""A Llama-family decoder seen as a chain of residual blocks.

Layer i of a decoder is two blocks, each a residual branch:

    ("mha", i):  h = h + self_attn(input_layernorm(h))
    ("mlp", i):  h = h + mlp(post_attention_layernorm(h))

Removing a block skips its branch, so its output is its input (the residual). Blocks are
numbered by *position* in forward order: position 2*i is ("mha", i), 2*i + 1 is ("mlp", i);
position 2*L stands for the final hidden state. `BlockModel.run` starts at any position, which is
what lets the search restart a candidate from cached activations instead of from the embeddings.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from contract import BLOCK_KINDS, BLOCK_TYPES, ErrorCode, UserError
from contract.blocks import Block
from contract.memory import LOGITS_CHUNK_BYTES

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def check_architecture(model: nn.Module) -> None:
    """Fail clearly on anything that is not a Llama-family decoder with the four layer parts."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    layers = getattr(getattr(model, "model", None), "layers", None)
    parts = ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")
    if (
        model_type not in SUPPORTED_MODEL_TYPES
        or layers is None
        or not all(hasattr(layer, p) for layer in layers for p in parts)
        or not hasattr(model.model, "rotary_emb")
    ):
        raise UserError(
            "model",
            f"architecture {model_type!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (decoders whose layers have "
            "self_attn, mlp, input_layernorm and post_attention_layernorm)",
            code=ErrorCode.UNSUPPORTED_ARCHITECTURE,
        )


class BlockModel:
    """Runs a Hugging Face Llama-family causal LM block by block, with any set of blocks removed."""

    def __init__(self, model: nn.Module) -> None:
        check_architecture(model)
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

    def block_modules(self, block: Block) -> tuple[Any, Any]:
        layer = self.layers[block.layer]
        if block.kind == "mha":
            return layer.input_layernorm, layer.self_attn
        return layer.post_attention_layernorm, layer.mlp

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
        return self.model.model.embed_tokens(input_ids)

    def _sliding_window(self, layer: int) -> int | None:
        window = getattr(self.config, "sliding_window", None)
        layer_types = getattr(self.config, "layer_types", None)
        if layer_types is not None:
            return window if layer_types[layer] == "sliding_attention" else None
        if self.config.model_type == "mistral":  # Mistral applies its window on every layer
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

    def _rotary(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (h.shape[1], h.device, h.dtype)
        if key not in self._rope:
            rotary = self.model.model.rotary_emb  # on the first device of a spread model
            at = rotary.inv_freq.device
            cos, sin = rotary(h.to(at), torch.arange(h.shape[1], device=at)[None])
            self._rope[key] = (cos.to(h.device), sin.to(h.device))
        return self._rope[key]

    def run_block(self, position: int, h: torch.Tensor) -> torch.Tensor:
        block = Block.at(position)
        norm, branch = self.block_modules(block)
        h = h.to(self._devices[position])  # a no-op unless the model spans devices
        if block.kind == "mlp":
            return h + branch(norm(h))
        out = branch(
            hidden_states=norm(h),
            position_embeddings=self._rotary(h),
            attention_mask=self._mask(h, block.layer),
        )[0]
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
        return self.model.lm_head(h.to(_device_of(self.model.lm_head)))

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
