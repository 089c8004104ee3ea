"""BlockPruner's greedy search, with activation reuse and identical results to the plain search.

Plain greedy search (core/naive.py) scores each candidate with a full forward pass from the
embeddings. Here, one iteration keeps the inputs of the current pruned model's block positions
(core.activations.ActivationCache, within a memory budget); a candidate at position p restarts
from the nearest kept input at or before p, skips p and runs only the blocks after it. The
winner's pass has already computed the next iteration's activations after p; they are adopted
instead of recomputed where memory allowed holding them. Every block sees exactly the tensors it
would see in a full pass (same batches, same ops), so PPLs are bit-identical at any budget.

The state is the contract's `SearchState`, so a caller can checkpoint it after each iteration
(`on_iteration`) and resume from it (`run_search(..., state=saved)`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from contract import Block, JobSpec, Progress, RemovedBlock, SearchState, Unit, UserError
from contract.iteration import beats, finish, target_reached, within_ratio
from contract.racing import DEFAULT_RACE_MARGIN, race_chunk, race_stages
from contract.spec import blocks_problem, method_problem, search_problem
from contract.state import RaceRecord
from core.activations import ActivationCache, After, ppl_from_nlls
from core.blocks import BlockModel
from core.racing import race_iteration, verified

ProgressCallback = Callable[[Progress], None]
StateCallback = Callable[[SearchState], None]


@dataclass(frozen=True)
class SearchConfig:
    """The part of a JobSpec the search itself needs."""

    method: str = "blockpruner"
    num_blocks: int | None = None
    param_ratio: float | None = None
    block_types: str = "mix"
    batch_size: int | None = None  # sequences per forward chunk; None = all at once
    cache_budget: int | None = None  # bytes of device memory for activations; None = all
    host_budget: int = 0  # bytes of pinned CPU memory for what the device budget leaves out
    search: str = "exact"  # or "racing" (core.racing)
    race_slice: int | None = None  # sequences in racing's first slice; None: the default
    race_margin: float = DEFAULT_RACE_MARGIN  # math.inf: no candidate dropped (= exact)
    verify: bool = False  # racing: also run each iteration exactly and record its pick
    seed: int = 0  # a seeded method's seed (evo)

    @classmethod
    def of(
        cls,
        spec: JobSpec,
        cache_budget: int | None = None,
        host_budget: int = 0,
        verify: bool = False,
    ) -> SearchConfig:
        """The spec's search settings; `cache_budget` is the machine's budget where the spec
        has none (the CLI's and the worker's planner decide it)."""
        budget = spec.cache_budget if spec.cache_budget is not None else cache_budget
        return cls(
            spec.method,
            spec.num_blocks,
            spec.param_ratio,
            spec.block_types,
            spec.batch_size,
            budget,
            host_budget,
            spec.search,
            spec.race_slice,
            spec.race_margin if spec.race_margin is not None else DEFAULT_RACE_MARGIN,
            verify,
            spec.seed,
        )

    def chunk(self, samples: int) -> int | None:
        """Sequences per forward chunk: racing's stages end on chunk boundaries."""
        if self.search != "racing":
            return self.batch_size
        return race_chunk(samples, self.batch_size, self.race_slice)

    def stages(self, samples: int) -> list[int]:
        """Where racing's stages end, in sequences (contract.racing); [] for an exact search."""
        if self.search != "racing":
            return []
        return race_stages(samples, self.batch_size, self.race_slice)

    def check(self) -> None:
        """The checks that need no model, by JobSpec's rules (the one home of the bounds)."""
        JobSpec.check_fields(
            method=self.method,
            num_blocks=self.num_blocks,
            param_ratio=self.param_ratio,
            block_types=self.block_types,
            batch_size=self.batch_size,
            cache_budget=self.cache_budget,
            search=self.search,
        )
        problem = method_problem(self.method, self.block_types, self.num_blocks)
        if problem is not None:
            raise UserError(*problem)
        # Not JobSpec's bound: the engine also takes an infinite margin (racing == exact).
        if not self.race_margin >= 0:
            raise UserError("race_margin", f"must be at least 0, got {self.race_margin}")

    def validate(self, bm: BlockModel, samples: int | None = None) -> None:
        """`check()`, and the bounds only a model and its calibration know: how many blocks it
        has to remove, and whether racing has sequences to race on."""
        self.check()
        if samples is not None:
            problem = search_problem(
                self.search, self.method, samples, self.batch_size, self.race_slice
            )
            if problem is not None:
                raise UserError(*problem)
        problem = blocks_problem(bm.num_layers, self.block_types, self.num_blocks)
        if problem is not None:
            raise UserError(*problem)


class CandidateScorer:
    """Scores any candidates on top of a removed set: one iteration's work, or a share of it (a
    distributed search gives each worker some of the candidates). It keeps the model, the
    calibration tokens and the activations of the last removed set, so a worker that scores
    several shares of one iteration runs the full pass once. Each score is reported as it is
    done. The PPLs are those run_search computes for the same candidates, bit for bit."""

    def __init__(
        self,
        bm: BlockModel,
        input_ids: torch.Tensor,
        batch_size: int | None,
        cache_budget: int | None = None,
        host_budget: int = 0,
    ) -> None:
        self.bm, self.input_ids, self.batch_size = bm, input_ids, batch_size
        self.budgets = (cache_budget, host_budget)
        self._cache: ActivationCache | None = None
        self._removed: tuple[Block, ...] | None = None
        self.removed_ppl: float | None = None  # the PPL of the removed set itself

    def _on(self, removed: Sequence[Block]) -> ActivationCache:
        if self._cache is None or self._removed != tuple(removed):
            self._cache = ActivationCache(self.bm, self.input_ids, self.batch_size, *self.budgets)
            self.removed_ppl = self._cache.build(removed)
            self._removed = tuple(removed)
        return self._cache

    def score(
        self,
        removed: Sequence[Block],
        candidates: Sequence[Block],
        on_score: Callable[[Block, float], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict[Block, float]:
        ppls: dict[Block, float] = {}

        def scored(block: Block, nlls: torch.Tensor) -> None:
            ppls[block] = ppl_from_nlls(nlls)
            if on_score is not None:
                on_score(block, ppls[block])

        self.sequence_nlls(removed, candidates, None, scored, should_stop)
        return ppls

    def sequence_nlls(
        self,
        removed: Sequence[Block],
        candidates: Sequence[Block],
        chunks: range | None = None,
        on_nlls: Callable[[Block, torch.Tensor], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict[Block, torch.Tensor]:
        """Each candidate's per-sequence NLLs over the sequence chunks `chunks` (default: all):
        a racing stage's share scores its slice."""
        cache = self._on(removed)
        out: dict[Block, torch.Tensor] = {}
        for block in candidates:
            if should_stop is not None and should_stop():
                break
            out[block] = cache.sequence_nlls((block,), chunks)[0]
            if on_nlls is not None:
                on_nlls(block, out[block])
        return out


def score_candidates(
    bm: BlockModel,
    input_ids: torch.Tensor,
    removed: Sequence[Block],
    candidates: Sequence[Block],
    batch_size: int | None = None,
) -> dict[Block, float]:
    """PPL of each candidate removed on top of `removed` (CandidateScorer, once)."""
    return CandidateScorer(bm, input_ids, batch_size).score(removed, candidates)


def block_units(bm: BlockModel, block_types: str) -> list[Unit]:
    """Each block of `block_types` as a unit of its own, in the paper's order (BlockPruner's)."""
    return [(b,) for b in bm.candidates(block_types)]


def run_search(
    bm: BlockModel,
    input_ids: torch.Tensor,
    config: SearchConfig,
    state: SearchState | None = None,
    *,
    on_iteration: StateCallback | None = None,
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    units: Sequence[Unit] | None = None,
    ranked: bool = False,
) -> SearchState:
    """Greedy BlockPruner search from `state` (a new search if None; it is not modified).
    Returns the final state; its `done` is False if `should_stop` stopped it. `units`: what one
    step may remove, in tie-break order (default: `block_units`; SLEB gives whole layers).
    `ranked`: the units are a ranking (ShortGPT's), removed in that order: each step scores only
    the next one."""
    config.validate(bm, len(input_ids))
    candidates = list(units) if units is not None else block_units(bm, config.block_types)
    state = copy.deepcopy(state) if state is not None else SearchState()
    removed = state.removed_blocks
    total_params = bm.total_params()
    removed_params = sum(bm.block_params(b) for b in removed)
    state.total_iterations = config.num_blocks
    state.done = False  # a finished state may be extended with a larger target
    # How each iteration picks, decided once: a ranking takes its next unit (scored exactly),
    # a racing search races, an exact one scores every unit on every sequence.
    racing = config.search == "racing" and not ranked
    pick = _racing_pick if racing else _exact_pick
    cache = ActivationCache(
        bm, input_ids, config.chunk(len(input_ids)), config.cache_budget, config.host_budget
    )
    removed_ppl = cache.build(removed)
    if state.base_ppl is None:
        state.base_ppl = removed_ppl

    while not target_reached(state.blocks_removed, config.num_blocks):
        remaining = [u for u in candidates if not set(u) & set(removed)]
        if ranked:
            remaining = remaining[:1]
        if not remaining:
            break
        picked = pick(cache, remaining, state, config, on_progress, should_stop)
        if picked is None:
            return state  # stopped: `done` stays False
        unit_params = sum(bm.block_params(b) for b in picked.unit)
        if not within_ratio(removed_params, unit_params, total_params, config.param_ratio):
            break
        after = picked.after if picked.after is not None else cache.rerun(picked.unit)
        picked.after = None  # the cache holds them from here: no second reference
        cache.adopt(picked.unit, after)
        del after
        removed.extend(picked.unit)
        removed_params += unit_params
        state.removed.extend(RemovedBlock.of(b, picked.ppl) for b in picked.unit)
        if picked.race is not None:
            state.races.append(picked.race)
        if on_iteration is not None:
            on_iteration(copy.deepcopy(state))  # a snapshot: the search goes on mutating `state`
    finish(state)
    return state


@dataclass
class Pick:
    """One iteration's winner: its PPL, the unit, its activations after it when they were kept
    (else the adoption reruns it), and, for a racing iteration, the race's record."""

    ppl: float
    unit: Unit
    after: After | None
    race: RaceRecord | None = None


def _exact_pick(
    cache: ActivationCache,
    remaining: list[Unit],
    state: SearchState,
    config: SearchConfig,
    on_progress: ProgressCallback | None,
    should_stop: Callable[[], bool] | None,
) -> Pick | None:
    best = _exact_iteration(cache, remaining, state, config, on_progress, should_stop)
    return None if best is None else Pick(*best)


def _racing_pick(
    cache: ActivationCache,
    remaining: list[Unit],
    state: SearchState,
    config: SearchConfig,
    on_progress: ProgressCallback | None,
    should_stop: Callable[[], bool] | None,
) -> Pick | None:
    """Race the units (core.racing); with `config.verify`, also run the iteration exactly from
    the same removed blocks and record the exact pick beside the race's."""
    stage_ends = config.stages(sum(len(chunk) for chunk in cache.chunks))
    raced = race_iteration(
        cache,
        remaining,
        stage_ends,
        config.race_margin,
        state.blocks_removed + 1,
        config.num_blocks,
        on_progress=on_progress,
        should_stop=should_stop,
    )
    if raced is None:
        return None
    ppl, unit, race = raced
    if not config.verify:
        return Pick(ppl, unit, None, race)
    best = _exact_iteration(cache, remaining, state, config, on_progress, should_stop)
    if best is None:
        return None
    after = best[2] if best[1] == unit else None  # the same pick: its activations need no rerun
    return Pick(ppl, unit, after, verified(race, best[:2]))


def _exact_iteration(
    cache: ActivationCache,
    remaining: list[Unit],
    state: SearchState,
    config: SearchConfig,
    on_progress: ProgressCallback | None,
    should_stop: Callable[[], bool] | None,
) -> tuple[float, Unit, After | None] | None:
    """Score every unit on every sequence; the lowest PPL wins (ties to the first). None if
    `should_stop` stopped it."""
    best: tuple[float, Unit, After | None] | None = None
    for n, unit in enumerate(remaining):
        if should_stop is not None and should_stop():
            return None
        # Keep this candidate's activations only if they fit beside the best one's.
        held = cache.after_bytes(best[1]) if best is not None and best[2] else (0, 0)
        ppl, after = cache.score(unit, keep=cache.can_hold(unit, also=held))
        if best is None or beats(ppl, best[0]):
            best = (ppl, unit, after)
        # A losing candidate's activations go now, not when the next one has recorded its
        # own: the peak is the cache + the best's + the current one's (contract.memory).
        del after
        if on_progress is not None:
            on_progress(
                Progress(
                    iteration=state.blocks_removed,
                    total_iterations=config.num_blocks,
                    scored=n + 1,
                    total_candidates=len(remaining),
                    best_ppl=best[0],
                    best_block=best[1][0],
                    last_block=unit[0],
                )
            )
    return best
