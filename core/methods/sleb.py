"""SLEB (Song et al., 2024, arXiv 2402.09025): remove whole decoder layers, one per step, each
time the layer whose removal raises the calibration PPL least.

That is BlockPruner's greedy search with a layer (its attention and MLP blocks together) as the
unit instead of a block, so it runs on the same engine: activation reuse restarts a candidate
layer from the cached input of its attention block, with PPLs identical to full passes
(tests/test_methods.py checks it against a brute-force layer greedy).
"""

from __future__ import annotations

import functools

from core.blocks import Block, BlockModel
from core.search import Unit, run_search


def layer_units(bm: BlockModel) -> list[Unit]:
    """Every layer as its two blocks, by layer (ties go to the lower layer)."""
    return [(Block("mha", i), Block("mlp", i)) for i in range(bm.num_layers)]


run = functools.partial(run_search, units=layer_units)
