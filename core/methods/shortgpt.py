"""ShortGPT (Men et al., 2024, arXiv 2403.03853): score every decoder layer once by its Block
Influence on the calibration tokens, and remove the layers with the lowest scores, in one shot.

    BI_i = 1 - mean over all calibration tokens t of cos(x_i[t], x_{i+1}[t])

where x_i is the hidden state entering layer i and x_{i+1} the one leaving it: a layer that
barely turns the residual stream matters little. The scores come from the unpruned model; the
PPL recorded after each removal (for the report, the export and `param_ratio`'s bookkeeping) is
measured with the engine's activation cache, like any other method's.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F

from contract import Progress, RemovedBlock, SearchState, UserError
from core.activations import ActivationCache
from core.blocks import Block, BlockModel
from core.search import SearchConfig, block_ref, target_reached


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
    config.validate(bm)
    state = copy.deepcopy(state) if state is not None else SearchState()
    order = removal_order(block_influence(bm, input_ids, config.batch_size))
    removed = [Block(r.block, r.layer) for r in state.removed]
    done_layers = [b.layer for b in removed[::2]]
    if done_layers != order[: len(done_layers)]:  # the same spec always gives the same order
        raise UserError("resume", "the saved state is not a prefix of this model's BI order")
    total_params = bm.total_params()
    removed_params = sum(bm.block_params(b) for b in removed)
    state.total_iterations = config.num_blocks
    state.done = False

    cache = ActivationCache(
        bm, input_ids, config.batch_size, config.cache_budget, config.host_budget
    )
    current_ppl = cache.build(removed)
    if state.base_ppl is None:
        state.base_ppl = current_ppl
    for layer in order[len(done_layers) :]:
        if target_reached(state, config):
            break
        if should_stop is not None and should_stop():
            return state
        unit = (Block("mha", layer), Block("mlp", layer))
        unit_params = sum(bm.block_params(b) for b in unit)
        if config.param_ratio is not None:
            if (removed_params + unit_params) / total_params > config.param_ratio:
                break  # the last layer not above the ratio was the previous one
        ppl, after = cache.score(unit, keep=cache.can_hold(unit))
        cache.adopt(unit, after if after is not None else cache.rerun(unit))
        removed_params += unit_params
        current_ppl = ppl
        state.removed.extend(RemovedBlock(block=b.kind, layer=b.layer, ppl=ppl) for b in unit)
        if on_progress is not None:
            progress = Progress(
                iteration=state.iteration,
                total_iterations=config.num_blocks,
                scored=1,
                total_candidates=1,
                best_ppl=ppl,
                best_block=block_ref(unit[0]),
                last_block=block_ref(unit[0]),
            )
            on_progress(progress)
        if on_iteration is not None:
            on_iteration(copy.deepcopy(state))
    state.done = True
    state.final_ppl = current_ppl
    return state
