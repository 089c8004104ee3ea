"""SLEB (Song et al., 2024, arXiv 2402.09025): remove whole decoder layers, one per step, each
time the layer whose removal raises the calibration PPL least.

That is BlockPruner's greedy search with a layer (its attention and MLP blocks together) as the
unit instead of a block, so it runs on the same engine: activation reuse restarts a candidate
layer from the cached input of its attention block, with PPLs identical to full passes
(tests/test_methods.py checks it against a brute-force layer greedy).
"""

from __future__ import annotations

import torch

from contract import SearchState, Unit
from contract.blocks import layer_blocks
from contract.methods import METHOD_TRAITS
from core.blocks import BlockModel
from core.methods.base import Callbacks, Units
from core.search import SearchConfig


def layer_units(bm: BlockModel) -> list[Unit]:
    """Every layer as its two blocks, by layer (ties go to the lower layer)."""
    return [layer_blocks(i) for i in range(bm.num_layers)]


class Sleb:
    traits = METHOD_TRAITS["sleb"]

    def units(
        self,
        bm: BlockModel,
        input_ids: torch.Tensor,
        config: SearchConfig,
        state: SearchState | None,
        callbacks: Callbacks,
    ) -> Units:
        return Units(layer_units(bm))


METHOD = Sleb()
