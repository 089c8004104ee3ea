"""SLEB (Song et al., 2024, arXiv 2402.09025): remove whole decoder layers, one per step, each
time the layer whose removal raises the calibration PPL least.

That is BlockPruner's greedy search with a layer (its attention and MLP blocks together) as the
unit instead of a block, so it runs on the same engine: activation reuse restarts a candidate
layer from the cached input of its attention block, with PPLs identical to full passes
(tests/test_methods.py checks it against a brute-force layer greedy).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from contract import Progress, SearchState
from core.blocks import Block, BlockModel
from core.search import SearchConfig, Unit, run_search


def layer_units(bm: BlockModel) -> list[Unit]:
    """Every layer as its two blocks, by layer (ties go to the lower layer)."""
    return [(Block("mha", i), Block("mlp", i)) for i in range(bm.num_layers)]


def run(
    bm: BlockModel,
    input_ids: torch.Tensor,
    config: SearchConfig,
    state: SearchState | None = None,
    *,
    on_iteration: Callable[[SearchState], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SearchState:
    return run_search(
        bm,
        input_ids,
        config,
        state,
        on_iteration=on_iteration,
        on_progress=on_progress,
        should_stop=should_stop,
        units=layer_units(bm),
    )
