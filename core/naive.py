"""Plain greedy BlockPruner search, as the paper's reference script runs it: every candidate is
scored by a full forward pass from the embeddings. It is the yardstick the engine
(core/search.py) is tested and benchmarked against, so it stays deliberately simple."""

from __future__ import annotations

import torch

from contract import Block
from core.activations import ppl_from_nlls
from core.blocks import BlockModel


def full_pass_ppl(
    bm: BlockModel, input_ids: torch.Tensor, removed: list[Block], batch_size: int | None = None
) -> float:
    skip = [bm.position(b) for b in removed]
    step = batch_size or len(input_ids)
    nlls = []
    for s in range(0, len(input_ids), step):
        ids = input_ids[s : s + step]
        nlls.append(bm.sequence_nll(bm.run(bm.embed(ids), 0, skip), ids))
    return ppl_from_nlls(torch.cat(nlls))


def plain_greedy_search(
    bm: BlockModel,
    input_ids: torch.Tensor,
    num_blocks: int,
    block_types: str = "mix",
    batch_size: int | None = None,
) -> list[dict]:
    """Removed blocks in order, each with the PPL after removing it."""
    removed: list[Block] = []
    steps = []
    for _ in range(num_blocks):
        scores = [
            (full_pass_ppl(bm, input_ids, removed + [b], batch_size), b)
            for b in bm.candidates(block_types)
            if b not in removed
        ]
        ppl, block = min(scores, key=lambda s: s[0])  # min keeps the first of equal PPLs
        removed.append(block)
        steps.append({**block.model_dump(), "ppl": ppl})
    return steps
