"""BlockPruner (Zhong et al., 2024, arXiv 2406.10594): split every decoder layer into its
attention and MLP blocks; in each step remove the block whose removal raises the calibration PPL
least. The greedy search with activation reuse is core/search.py's `run_search` (its
CandidateScorer also serves the distributed search); the units are single blocks of
`config.block_types` in the paper's order (all MHA blocks by layer, then all MLP blocks)."""

from __future__ import annotations

import torch

from contract import SearchState
from contract.methods import METHOD_TRAITS
from core.blocks import BlockModel
from core.methods.base import Callbacks, Units
from core.search import SearchConfig, block_units


class BlockPruner:
    traits = METHOD_TRAITS["blockpruner"]

    def units(
        self,
        bm: BlockModel,
        input_ids: torch.Tensor,
        config: SearchConfig,
        state: SearchState | None,
        callbacks: Callbacks,
    ) -> Units:
        return Units(block_units(bm, config.block_types))


METHOD = BlockPruner()
