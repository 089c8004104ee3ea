"""BlockPruner (Zhong et al., 2024, arXiv 2406.10594): split every decoder layer into its
attention and MLP blocks; in each step remove the block whose removal raises the calibration PPL
least. The greedy search with activation reuse is core/search.py's `run_search` (its
CandidateScorer also serves the distributed search); with no `units` it removes single blocks of
`config.block_types` in the paper's order (all MHA blocks by layer, then all MLP blocks)."""

from __future__ import annotations

from core.search import run_search

run = run_search
