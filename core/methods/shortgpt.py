"""ShortGPT (Men et al., 2024, arXiv 2403.03853): score every decoder layer once by its Block
Influence on the calibration tokens, and remove the layers with the lowest scores, in one shot.

    BI_i = 1 - mean over all calibration tokens t of cos(x_i[t], x_{i+1}[t])

where x_i is the hidden state entering layer i and x_{i+1} the one leaving it: a layer that
barely turns the residual stream matters little. The scores come from the unpruned model; the
removals then go through the engine's loop (core/search.py) as a ranking, so the PPL recorded
after each one is measured with its activation cache, like any other method's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from contract import SearchState, UserError
from contract.blocks import layer_blocks
from contract.methods import METHOD_TRAITS
from core.blocks import BlockModel
from core.methods.base import Callbacks, Units
from core.search import SearchConfig


@torch.inference_mode()
def block_influence(
    bm: BlockModel, input_ids: torch.Tensor, batch_size: int | None = None
) -> list[float]:
    """BI of every layer of the unpruned model, averaged over every token of `input_ids`."""
    sums = torch.zeros(bm.num_layers, dtype=torch.float64)
    step = batch_size or len(input_ids)
    for s in range(0, len(input_ids), step):
        h = bm.embed(input_ids[s : s + step])
        for i in range(bm.num_layers):
            out = bm.run_block(2 * i + 1, bm.run_block(2 * i, h))
            cos = F.cosine_similarity(h.float(), out.float().to(h.device), dim=-1)
            sums[i] += cos.double().sum().cpu()
            h = out
    return (1 - sums / input_ids.numel()).tolist()


def removal_order(influence: list[float]) -> list[int]:
    """Layers from the lowest Block Influence up (ties: the lower layer first)."""
    return sorted(range(len(influence)), key=lambda i: (influence[i], i))


class ShortGPT:
    traits = METHOD_TRAITS["shortgpt"]

    def units(
        self,
        bm: BlockModel,
        input_ids: torch.Tensor,
        config: SearchConfig,
        state: SearchState | None,
        callbacks: Callbacks,
    ) -> Units:
        """The layers in Block Influence order, a ranking the engine's loop removes one per step
        (measuring each step's PPL with its cache, and stopping at the target)."""
        config.validate(bm)
        order = removal_order(block_influence(bm, input_ids, config.batch_size))
        done_layers = [r.layer for r in (state.removed if state is not None else [])[::2]]
        if done_layers != order[: len(done_layers)]:  # the same spec always gives the same order
            raise UserError("resume", "the saved state is not a prefix of this model's BI order")
        return Units([layer_blocks(i) for i in order], ranked=True)


METHOD = ShortGPT()
