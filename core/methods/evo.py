"""Evo: the set of attention and MLP blocks to remove at a parameter budget, found by an
evolutionary search over whole sets instead of one block at a time (after EvoPress, arXiv
2410.14649).

The greedy rule (BlockPruner, SLEB) ranks blocks by the PPL rise alone, whatever their size,
and never revisits a step. Here the budget is the target from the start:

1. **Start.** The greedy searches the engine already has: whole layers by calibration PPL
   (SLEB) while a layer fits the budget, then single blocks (BlockPruner) while one fits.
2. **Evolve.** Each generation makes `OFFSPRING` children of the best set: a child restores one
   to three removed blocks and refills the freed parameters with random kept blocks (so every
   child spends the budget as fully as the parent: swaps of about equal size). A set's fitness
   is the mean KL divergence of its next-token distributions from the dense model's on the
   calibration text (or its NLL: `objective`). Children are screened on the first
   `SCREEN_SEQUENCES` calibration sequences; the best `CONFIRM` are scored on all of them, and
   one that beats the parent there replaces it. The result is never worse on the calibration
   objective than its start. It stops after GENERATIONS, or PATIENCE generations without a
   better set.
3. **Order.** The chosen set is handed to the engine's loop as a ranking (the start's blocks in
   their greedy order, then the others by position), which removes it one block per step and
   records each step's calibration PPL.

Everything is seeded by the job's `seed`, so a search and its resume pick the same set. After
every generation the search checkpoints its record (contract.state.EvolutionRecord: the start,
the best set, its fitness, the generation) in the job's state and reports its progress; a resume
goes on from the last generation done, and a stop (cancel, a lost lease) waits at most one
generation.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Callable, Iterable, Sequence

import torch

from contract import Block, Progress, SearchState, UserError
from contract.methods import METHOD_TRAITS
from contract.racing import paired_difference
from contract.state import EvolutionRecord
from core.activations import ActivationCache
from core.blocks import BlockModel
from core.methods.base import Callbacks, Units
from core.methods.sleb import layer_units
from core.search import ProgressCallback, SearchConfig, run_search

log = logging.getLogger(__name__)
GENERATIONS = 100
PATIENCE = 30  # generations without a better set before the search stops
OFFSPRING = 12
CONFIRM = 2
SCREEN_SEQUENCES = 2
OBJECTIVE = "kl"  # or "nll" (the calibration PPL): measured in bench/fidelity.py
# A child replaces the parent when its mean objective is lower by this many standard errors of
# their paired per-sequence differences (0: lower at all).
ACCEPT_MARGIN = 0.0
TOP_K = 256  # the dense tokens that the KL objective compares at each position
RemovedSet = frozenset[Block]
RNG_VERSION = random.getstate()[0]  # the Mersenne Twister state's format (3 since Python 3.2)


class Evo:
    traits = METHOD_TRAITS["evo"]

    def units(
        self,
        bm: BlockModel,
        input_ids: torch.Tensor,
        config: SearchConfig,
        state: SearchState | None,
        callbacks: Callbacks,
    ) -> Units:
        config.validate(bm)
        if config.param_ratio is None:
            raise UserError(
                "param_ratio",
                "evo searches for the best set at a parameter budget: give param_ratio "
                "(num_blocks does not apply)",
            )
        state = copy.deepcopy(state) if state is not None else SearchState()

        def checkpoint(record: EvolutionRecord) -> None:
            state.evolution = record
            if callbacks.on_iteration is not None:
                callbacks.on_iteration(copy.deepcopy(state))
            if callbacks.on_progress is not None:
                callbacks.on_progress(
                    Progress(
                        generation=record.generation,
                        generations=GENERATIONS,
                        best_fitness=record.fitness,
                    )
                )

        record = state.evolution
        if record is None or not record.done:
            record = evolve(
                bm,
                input_ids,
                config.param_ratio,
                config.seed,
                config.batch_size,
                config.block_types,
                record=record,
                on_generation=checkpoint,
                should_stop=callbacks.should_stop,
                on_progress=callbacks.on_progress,
            )
        if record is None or not record.done:  # stopped: the checkpoint has where it stood
            return Units([], state=state, stopped=True)
        state.evolution = record
        order = removal_order(record)
        done = state.removed_blocks
        if done != order[: len(done)]:  # the same spec and seed always give the same set
            raise UserError("resume", "the saved state is not a prefix of this search's set")
        return Units([(b,) for b in order], ranked=True, state=state)


def evo_search(
    bm: BlockModel, input_ids: torch.Tensor, param_ratio: float, **options
) -> list[Block]:
    """The blocks to remove within `param_ratio` of the parameters, in removal order (`evolve`'s
    set, with its options)."""
    record = evolve(bm, input_ids, param_ratio, **options)
    assert record is not None and record.done  # nothing stops it
    return removal_order(record)


def removal_order(record: EvolutionRecord) -> list[Block]:
    """The chosen set in removal order: the start's blocks in their greedy order, then the
    others by position."""
    best = set(record.best)
    return [b for b in record.start if b in best] + _sorted(best - set(record.start))


def evolve(
    bm: BlockModel,
    input_ids: torch.Tensor,
    param_ratio: float,
    seed: int = 0,
    batch_size: int | None = None,
    block_types: str = "mix",
    generations: int = GENERATIONS,
    offspring: int = OFFSPRING,
    objective: str = OBJECTIVE,
    accept_margin: float = ACCEPT_MARGIN,
    *,
    record: EvolutionRecord | None = None,
    on_generation: Callable[[EvolutionRecord], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_progress: ProgressCallback | None = None,
) -> EvolutionRecord | None:
    """The search from `record` (None: from the greedy start), to its end or until
    `should_stop`: the record where it stands (None if stopped in the start). `objective`: "kl"
    (from the dense model's next-token distributions) or "nll". The mutations draw from one
    generator seeded by `seed`, whose state the record keeps, so a search resumed from its
    record picks what one that never stopped picks."""
    blocks = bm.candidates(block_types)
    size = {b: bm.block_params(b) for b in blocks}
    budget = int(param_ratio * bm.total_params())
    if record is None:
        start: list[Block] | None = _greedy_start(
            bm, input_ids, param_ratio, batch_size, block_types, on_progress, should_stop
        )
        if start is None:
            return None
        if not start:
            raise UserError(
                "param_ratio",
                f"the budget ({budget:,} parameters) is below the smallest block "
                f"({min(size.values()):,})",
            )
    fitness = _Fitness(bm, input_ids, batch_size, objective)
    if record is None:
        assert start is not None
        record = EvolutionRecord(
            start=start, best=_sorted(start), fitness=fitness(frozenset(start))
        )
    best = frozenset(record.best)
    best_fit, since_better = record.fitness, record.since_better
    rng = random.Random(seed)
    if record.rng:
        rng.setstate((RNG_VERSION, tuple(record.rng), None))
    for generation in range(record.generation, generations):
        if since_better >= PATIENCE:
            break
        if should_stop is not None and should_stop():
            return record
        children = {_mutate(best, blocks, size, budget, rng) for _ in range(offspring)}
        children.discard(best)
        screened = sorted(children, key=lambda c: (fitness(c, screen_only=True), _key(c)))
        since_better += 1
        for child in screened[:CONFIRM]:  # a child can lose the screen and win on all
            if fitness.improves(child, best, accept_margin):
                best, best_fit, since_better = child, fitness(child), 0
        log.info("evo generation %d: best mean %s %.4f", generation + 1, objective, best_fit)
        record = record.model_copy(
            update={"best": _sorted(best), "fitness": best_fit, "generation": generation + 1,
                    "since_better": since_better, "rng": list(rng.getstate()[1])}
        )  # fmt: skip
        if on_generation is not None:
            on_generation(record)
    return record.model_copy(update={"done": True})


Score = Callable[[torch.Tensor, int], torch.Tensor]


class _Fitness:
    """A set's objective with its blocks removed, memoised: the mean over the screen's sequences
    (`screen_only`) or over all of them."""

    def __init__(
        self, bm: BlockModel, input_ids: torch.Tensor, batch_size: int | None, objective: str
    ) -> None:
        # The dense model's activations at every position, in chunks of the screen's size (never
        # above batch_size, a memory bound): a set restarts where its first removed block is,
        # and chunk 0 is the screen.
        chunk = min(batch_size or SCREEN_SEQUENCES, SCREEN_SEQUENCES)
        self.cache = ActivationCache(bm, input_ids, chunk)
        self.cache.build([])
        self.score = _kl_score(bm, self.cache) if objective == "kl" else _nll_score(bm, self.cache)
        self.scored: dict[tuple[RemovedSet, bool], list[float]] = {}

    def __call__(self, removed: RemovedSet, screen_only: bool = False) -> float:
        values = self.sequences(removed, screen_only)
        return torch.tensor(values, dtype=torch.float64).mean().item()

    def sequences(self, removed: RemovedSet, screen_only: bool = False) -> list[float]:
        """The objective of each sequence (of the screen's, or all)."""
        if (removed, screen_only) not in self.scored:
            unit = tuple(_sorted(removed))
            screen = range(1) if screen_only else None
            values = self.cache.sequence_scores(unit, self.score, screen)
            self.scored[removed, screen_only] = values.double().tolist()
        return self.scored[removed, screen_only]

    def improves(self, child: RemovedSet, parent: RemovedSet, margin: float) -> bool:
        """The child's mean beats the parent's; with `margin` > 0, by at least `margin` standard
        errors of their paired per-sequence differences (a gain the calibration's noise could
        not give)."""
        if margin <= 0:
            return self(child) < self(parent)
        child_values = self.sequences(child)
        d, spread = paired_difference(child_values, self.sequences(parent))
        return d < -margin * spread / math.sqrt(len(child_values))


def _nll_score(bm: BlockModel, cache: ActivationCache) -> Score:
    """Each sequence's mean next-token NLL: the calibration PPL's objective."""
    return lambda h, c: bm.sequence_nll(h, cache.chunks[c])


def _kl_score(bm: BlockModel, cache: ActivationCache) -> Score:
    """Each sequence's mean KL(dense || pruned) of the next-token distributions, over the dense
    model's TOP_K most likely tokens at each position (their mass is nearly all of it; keeping
    the whole vocabulary would cost tokens x vocabulary of memory)."""
    dense = []
    for ids in cache.chunks:
        lp = bm.logits(bm.run(bm.embed(ids), 0)[:, :-1]).float().log_softmax(-1)
        top = lp.topk(min(TOP_K, lp.shape[-1]), dim=-1)
        dense.append((top.indices, top.values))

    def score(h: torch.Tensor, c: int) -> torch.Tensor:
        index, base = dense[c]
        ours = bm.logits(h[:, :-1]).float().log_softmax(-1).gather(-1, index)
        return (base.exp() * (base - ours)).sum(-1).mean(-1)

    return score


def _greedy_start(
    bm: BlockModel,
    input_ids: torch.Tensor,
    param_ratio: float,
    batch_size: int | None,
    block_types: str,
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[Block] | None:
    """Whole layers by the greedy rule while one fits (SLEB), then single blocks while one fits
    (BlockPruner): the engine's exact searches, in removal order (None if stopped)."""
    state = None
    if block_types == "mix":
        layers = SearchConfig(method="sleb", param_ratio=param_ratio, batch_size=batch_size)
        state = run_search(
            bm, input_ids, layers, units=layer_units(bm), on_progress=on_progress,
            should_stop=should_stop,
        )  # fmt: skip
        if not state.done:
            return None
    singles = SearchConfig(param_ratio=param_ratio, batch_size=batch_size, block_types=block_types)
    state = run_search(
        bm, input_ids, singles, state, on_progress=on_progress, should_stop=should_stop
    )
    return state.removed_blocks if state.done else None


def _mutate(
    parent: RemovedSet,
    blocks: Sequence[Block],
    size: dict[Block, int],
    budget: int,
    rng: random.Random,
) -> RemovedSet:
    """Restore 1 to 3 removed blocks and refill the freed parameters with random kept ones."""
    child = set(parent)
    order = _sorted(parent)
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


def _sorted(removed: Iterable[Block]) -> list[Block]:
    return sorted(removed, key=_key_block)


def _key(removed: RemovedSet) -> list[int]:
    """A set's tie-break: its positions in order (deterministic, unlike a set's hash order)."""
    return sorted(b.position for b in removed)


METHOD = Evo()
