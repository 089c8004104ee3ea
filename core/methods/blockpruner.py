"""BlockPruner (Zhong et al., 2024, arXiv 2406.10594): split every decoder layer into its
attention and MLP blocks; in each step remove the block whose removal raises the calibration PPL
least. The greedy search with activation reuse lives in core/search.py (CandidateScorer shares
it with the distributed search); this module is the method's entry point."""

from __future__ import annotations

from collections.abc import Callable

import torch

from contract import Progress, SearchState
from core.blocks import BlockModel
from core.search import SearchConfig, run_search


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
    # One unit per block of config.block_types, in the paper's order (all MHA, then all MLP).
    return run_search(
        bm,
        input_ids,
        config,
        state,
        on_iteration=on_iteration,
        on_progress=on_progress,
        should_stop=should_stop,
    )
