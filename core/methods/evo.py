"""Evo: the set of attention and MLP blocks to remove at a parameter budget, found by an
evolutionary search over whole sets instead of one block at a time (after EvoPress, arXiv
2410.14649).

The greedy rule (BlockPruner, SLEB) ranks blocks by the PPL rise alone, whatever their size,
and never revisits a step. Here the budget is the target from the start:

1. **Start.** The greedy searches the engine already has: whole layers by calibration PPL
   (SLEB) while a layer fits the budget, then single blocks (BlockPruner) while one fits.
2. **Evolve.** Each generation makes `OFFSPRING` children of the best set: a child restores one
   to three removed blocks and refills the freed parameters with random kept blocks (so every
   child spends the budget as fully as the parent: swaps of about equal size). Children are
   screened on the first `SCREEN_SEQUENCES` calibration sequences; the best `CONFIRM` are scored
   on all of them, and one that beats the parent there replaces it. The result is never worse on the calibration text than its start.
3. **Order.** The chosen set is handed to the engine's loop as a ranking (the start's blocks in
   their greedy order, then the others by position), which removes it one block per step and
   records each step's calibration PPL.

Everything is seeded by the job's `seed`, so a search and its resume pick the same set.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence

import torch

from contract import Block, SearchState, UserError
from contract.methods import METHOD_TRAITS
from core.activations import ActivationCache
from core.blocks import BlockModel
from core.methods.base import Units
from core.methods.sleb import layer_units
from core.search import SearchConfig, run_search

log = logging.getLogger(__name__)
GENERATIONS = 100
OFFSPRING = 12
CONFIRM = 2
SCREEN_SEQUENCES = 2
RemovedSet = frozenset[Block]


class Evo:
    traits = METHOD_TRAITS["evo"]

    def units(
        self,
        bm: BlockModel,
        input_ids: torch.Tensor,
        config: SearchConfig,
        state: SearchState | None,
    ) -> Units:
        config.validate(bm)
        if config.param_ratio is None:
            raise UserError(
                "param_ratio",
                "evo searches for the best set at a parameter budget: give param_ratio "
                "(num_blocks does not apply)",
            )
        order = evo_search(
            bm, input_ids, config.param_ratio, config.seed, config.batch_size, config.block_types
        )
        done = state.removed_blocks if state is not None else []
        if done != order[: len(done)]:  # the same spec and seed always give the same set
            raise UserError("resume", "the saved state is not a prefix of this search's set")
        return Units([(b,) for b in order], ranked=True)


def evo_search(
    bm: BlockModel,
    input_ids: torch.Tensor,
    param_ratio: float,
    seed: int = 0,
    batch_size: int | None = None,
    block_types: str = "mix",
    generations: int = GENERATIONS,
    offspring: int = OFFSPRING,
    on_generation: Callable[[int, float], None] | None = None,
) -> list[Block]:
    """The blocks to remove within `param_ratio` of the parameters, in removal order."""
    rng = random.Random(seed)
    blocks = bm.candidates(block_types)
    size = {b: bm.block_params(b) for b in blocks}
    budget = int(param_ratio * bm.total_params())
    start = _greedy_start(bm, input_ids, param_ratio, batch_size, block_types)
    if not start:
        raise UserError(
            "param_ratio",
            f"the budget ({budget:,} parameters) is below the smallest block "
            f"({min(size.values()):,})",
        )
    # The dense model's activations at every position, in chunks of the screen's size (never
    # above batch_size, a memory bound): a set restarts where its first removed block is, and
    # chunk 0 is the screen.
    cache = ActivationCache(bm, input_ids, min(batch_size or SCREEN_SEQUENCES, SCREEN_SEQUENCES))
    cache.build([])
    screen = range(1)
    scored: dict[tuple[RemovedSet, bool], float] = {}

    def fitness(removed: RemovedSet, screen_only: bool = False) -> float:
        """Mean NLL over the screen's sequences or all of them, with `removed` taken out."""
        if (removed, screen_only) not in scored:
            unit = tuple(sorted(removed, key=_key_block))
            nll = cache.sequence_nlls(unit, screen if screen_only else None)[0]
            scored[removed, screen_only] = nll.double().mean().item()
        return scored[removed, screen_only]

    best = frozenset(start)
    best_fit = fitness(best)
    for generation in range(generations):
        children = {_mutate(best, blocks, size, budget, rng) for _ in range(offspring)}
        children.discard(best)
        screened = sorted(children, key=lambda c: (fitness(c, screen_only=True), _key(c)))
        for child in screened[:CONFIRM]:  # a child can lose the screen and win on all
            if fitness(child) < best_fit:
                best, best_fit = child, fitness(child)
        log.info("evo generation %d: best mean NLL %.4f", generation + 1, best_fit)
        if on_generation is not None:
            on_generation(generation + 1, best_fit)
    rest = sorted(best - set(start), key=_key_block)
    return [b for b in start if b in best] + rest


def _greedy_start(
    bm: BlockModel,
    input_ids: torch.Tensor,
    param_ratio: float,
    batch_size: int | None,
    block_types: str,
) -> list[Block]:
    """Whole layers by the greedy rule while one fits (SLEB), then single blocks while one fits
    (BlockPruner): the engine's exact searches, in removal order."""
    state = None
    if block_types == "mix":
        layers = SearchConfig(method="sleb", param_ratio=param_ratio, batch_size=batch_size)
        state = run_search(bm, input_ids, layers, units=layer_units(bm))
    singles = SearchConfig(param_ratio=param_ratio, batch_size=batch_size, block_types=block_types)
    return run_search(bm, input_ids, singles, state).removed_blocks


def _mutate(
    parent: RemovedSet,
    blocks: Sequence[Block],
    size: dict[Block, int],
    budget: int,
    rng: random.Random,
) -> RemovedSet:
    """Restore 1 to 3 removed blocks and refill the freed parameters with random kept ones."""
    child = set(parent)
    order = sorted(parent, key=_key_block)
    for out in rng.sample(order, k=min(len(order), rng.choice((1, 1, 2, 3)))):
        child.discard(out)
    used = sum(size[b] for b in child)
    pool = [b for b in blocks if b not in parent]
    rng.shuffle(pool)
    for b in pool:
        if used + size[b] <= budget:
            child.add(b)
            used += size[b]
    return frozenset(child)


def _key_block(b: Block) -> int:
    return b.position


def _key(removed: RemovedSet) -> list[int]:
    """A set's tie-break: its positions in order (deterministic, unlike a set's hash order)."""
    return sorted(b.position for b in removed)


METHOD = Evo()
