"""BlockPruner's greedy search, with activation reuse and identical results to the plain search.

Plain greedy search (core/naive.py) scores each candidate with a full forward pass from the
embeddings. Here, one iteration keeps the input of every block position of the current pruned
model (`ActivationCache`); a candidate at position p restarts from the cached input of p, skips p
and runs only the blocks after it. The winner's pass has already computed the next iteration's
activations after p, so they are adopted instead of recomputed. Every block sees exactly the
tensors it would see in a full pass (same batches, same ops), so PPLs are bit-identical.

The state is the contract's `SearchState`, so a caller can checkpoint it after each iteration
(`on_iteration`) and resume from it (`run_search(..., state=saved)`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from contract import BlockRef, JobSpec, Progress, RemovedBlock, SearchState, UserError
from core.blocks import Block, BlockModel

ProgressCallback = Callable[[Progress], None]
StateCallback = Callable[[SearchState], None]


@dataclass(frozen=True)
class SearchConfig:
    """The part of a JobSpec the search itself needs."""

    num_blocks: int | None = None
    param_ratio: float | None = None
    block_types: str = "mix"
    batch_size: int | None = None  # sequences per forward chunk; None = all at once

    @classmethod
    def of(cls, spec: JobSpec) -> SearchConfig:
        return cls(spec.num_blocks, spec.param_ratio, spec.block_types, spec.batch_size)

    def check(self) -> None:
        """The checks that need no model, by JobSpec's rules (the one home of the bounds)."""
        JobSpec.check_fields(
            num_blocks=self.num_blocks,
            param_ratio=self.param_ratio,
            block_types=self.block_types,
            batch_size=self.batch_size,
        )

    def validate(self, bm: BlockModel) -> None:
        """`check()`, and the bound only a model knows: how many blocks it has to remove."""
        self.check()
        max_blocks = len(bm.candidates(self.block_types))
        if self.num_blocks is not None and self.num_blocks > max_blocks:
            raise UserError(
                "num_blocks", f"must be between 1 and {max_blocks} for this model and block_types"
            )


def ppl_from_nlls(nlls: torch.Tensor) -> float:
    """The paper's PPL: exp of the mean over sequences of each sequence's mean token NLL."""
    return math.exp(nlls.double().mean().item())


class ActivationCache:
    """The input of every block position of one pruned model, on the calibration batch.

    `acts[p][c]` is the input of position p for sequence chunk c; `acts[2L]` is the final hidden.
    """

    def __init__(self, bm: BlockModel, input_ids: torch.Tensor, batch_size: int | None) -> None:
        self.bm = bm
        step = batch_size or len(input_ids)
        self.chunks = [input_ids[s : s + step] for s in range(0, len(input_ids), step)]
        self.acts: list[list[torch.Tensor]] = []
        self.skip: set[int] = set()
        self.work = 0  # block evaluations, for benchmarks

    def build(self, removed: Sequence[Block]) -> float:
        """Full pass of the model with `removed` taken out; returns its PPL."""
        self.skip = {self.bm.position(b) for b in removed}
        records = []
        nlls = []
        for ids in self.chunks:
            record = {0: self.bm.embed(ids)}
            h = self.bm.run(record[0], 0, self.skip, record)
            nlls.append(self.bm.sequence_nll(h, ids))
            records.append(record)
            self.work += self.bm.num_positions - len(self.skip)
        self.acts = [[r[p] for r in records] for p in range(self.bm.num_positions + 1)]
        return ppl_from_nlls(torch.cat(nlls))

    def score(self, block: Block) -> tuple[float, list[list[torch.Tensor]]]:
        """PPL with `block` also removed, and the activations after it (to adopt if it wins)."""
        pos = self.bm.position(block)
        if pos in self.skip:
            raise UserError("candidates", f"block {block} is already removed")
        after: list[list[torch.Tensor]] = [[] for _ in range(pos + 1, self.bm.num_positions + 1)]
        nlls = []
        for c, ids in enumerate(self.chunks):
            record: dict[int, torch.Tensor] = {pos + 1: self.acts[pos][c]}
            h = self.bm.run(self.acts[pos][c], pos + 1, self.skip, record)
            nlls.append(self.bm.sequence_nll(h, ids))
            for i, p in enumerate(range(pos + 1, self.bm.num_positions + 1)):
                after[i].append(record[p])
            self.work += self.bm.num_positions - pos - 1 - sum(p > pos for p in self.skip)
        return ppl_from_nlls(torch.cat(nlls)), after

    def adopt(self, block: Block, after: list[list[torch.Tensor]]) -> None:
        """Make the cache that of the model with `block` also removed, from its scoring pass."""
        pos = self.bm.position(block)
        self.acts[pos + 1 :] = after
        self.skip.add(pos)


class CandidateScorer:
    """Scores any candidates on top of a removed set: one iteration's work, or a share of it (a
    distributed search gives each worker some of the candidates). It keeps the model, the
    calibration tokens and the activations of the last removed set, so a worker that scores
    several shares of one iteration runs the full pass once. Each score is reported as it is
    done. The PPLs are those run_search computes for the same candidates, bit for bit."""

    def __init__(self, bm: BlockModel, input_ids: torch.Tensor, batch_size: int | None) -> None:
        self.bm, self.input_ids, self.batch_size = bm, input_ids, batch_size
        self._cache: ActivationCache | None = None
        self._removed: tuple[Block, ...] | None = None
        self.removed_ppl: float | None = None  # the PPL of the removed set itself

    def score(
        self,
        removed: Sequence[Block],
        candidates: Sequence[Block],
        on_score: Callable[[Block, float], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict[Block, float]:
        if self._cache is None or self._removed != tuple(removed):
            self._cache = ActivationCache(self.bm, self.input_ids, self.batch_size)
            self.removed_ppl = self._cache.build(removed)
            self._removed = tuple(removed)
        scores: dict[Block, float] = {}
        for block in candidates:
            if should_stop is not None and should_stop():
                break
            scores[block] = self._cache.score(block)[0]  # the activations after it: not kept
            if on_score is not None:
                on_score(block, scores[block])
        return scores


def score_candidates(
    bm: BlockModel,
    input_ids: torch.Tensor,
    removed: Sequence[Block],
    candidates: Sequence[Block],
    batch_size: int | None = None,
) -> dict[Block, float]:
    """PPL of each candidate removed on top of `removed` (CandidateScorer, once)."""
    return CandidateScorer(bm, input_ids, batch_size).score(removed, candidates)


def run_search(
    bm: BlockModel,
    input_ids: torch.Tensor,
    config: SearchConfig,
    state: SearchState | None = None,
    *,
    on_iteration: StateCallback | None = None,
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SearchState:
    """Greedy BlockPruner search from `state` (a new search if None; it is not modified).
    Returns the final state; its `done` is False if `should_stop` stopped it."""
    config.validate(bm)
    state = copy.deepcopy(state) if state is not None else SearchState()
    removed = [Block(r.block, r.layer) for r in state.removed]
    total_params = bm.total_params()
    removed_params = sum(bm.block_params(b) for b in removed)
    state.total_iterations = config.num_blocks
    state.done = False  # a finished state may be extended with a larger target

    cache = ActivationCache(bm, input_ids, config.batch_size)
    current_ppl = cache.build(removed)
    if state.base_ppl is None:
        state.base_ppl = current_ppl

    while not _target_reached(state, config):
        candidates = [b for b in bm.candidates(config.block_types) if b not in removed]
        best: tuple[float, Block, list] | None = None
        for n, block in enumerate(candidates):
            if should_stop is not None and should_stop():
                return state
            ppl, after = cache.score(block)
            if best is None or ppl < best[0]:  # strict: ties go to the first candidate
                best = (ppl, block, after)
            if on_progress is not None:
                on_progress(
                    Progress(
                        iteration=state.iteration,
                        total_iterations=config.num_blocks,
                        scored=n + 1,
                        total_candidates=len(candidates),
                        best_ppl=best[0],
                        best_block=_ref(best[1]),
                        last_block=_ref(block),
                    )
                )
        if best is None:  # nothing left to remove
            break
        ppl, block, after = best
        if config.param_ratio is not None:
            if (removed_params + bm.block_params(block)) / total_params > config.param_ratio:
                break  # the last step not above the ratio was the previous one
        cache.adopt(block, after)
        removed.append(block)
        removed_params += bm.block_params(block)
        current_ppl = ppl
        state.removed.append(RemovedBlock(block=block.kind, layer=block.layer, ppl=ppl))
        if on_iteration is not None:
            on_iteration(copy.deepcopy(state))  # a snapshot: the search goes on mutating `state`
    state.done = True
    state.final_ppl = current_ppl
    return state


def _ref(block: Block) -> BlockRef:
    return BlockRef(block=block.kind, layer=block.layer)


def _target_reached(state: SearchState, config: SearchConfig) -> bool:
    return config.num_blocks is not None and state.iteration >= config.num_blocks
