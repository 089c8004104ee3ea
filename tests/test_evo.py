"""Evo (core/methods/evo.py): the best set of blocks at a parameter budget. On a model small enough
to try every set it finds the optimum; it spends the budget, is seeded, resumes, and goes through
the engine's loop like the other methods."""

import itertools

import pytest
from conftest import tiny_ids, tiny_model

from contract import JobSpec, Progress, SearchState, UserError
from core.blocks import BlockModel
from core.methods import run_method
from core.methods.evo import evo_search
from core.naive import full_pass_ppl
from core.search import SearchConfig


def params(bm: BlockModel, blocks) -> int:
    return sum(bm.block_params(b) for b in blocks)


def brute_force_best(bm: BlockModel, ids, ratio: float, objective):
    """Every set of blocks that spends the budget (no other block fits beside it), scored by
    `objective` (full passes): the lowest."""
    budget = ratio * bm.total_params()
    blocks = bm.candidates()
    best = None
    for k in range(1, len(blocks) + 1):
        for subset in itertools.combinations(blocks, k):
            left = budget - params(bm, subset)
            if left >= 0 and all(bm.block_params(b) > left for b in blocks if b not in subset):
                value = objective(list(subset))
                if best is None or value < best[0]:
                    best = (value, set(subset))
    return best


def kl_from_dense(bm: BlockModel, ids, removed) -> float:
    """Mean KL(dense || pruned) of the next-token distributions, by full passes."""
    dense = bm.forward_logits(ids)[:, :-1].log_softmax(-1)
    ours = bm.forward_logits(ids, removed)[:, :-1].log_softmax(-1)
    return (dense.exp() * (dense - ours)).sum(-1).mean().item()


def test_evo_finds_the_best_set_that_fits_the_budget(arch):
    bm = BlockModel(tiny_model(arch, layers=4))
    ids = tiny_ids(6, 16)
    ratio = 0.25
    chosen = evo_search(bm, ids, ratio, seed=0, objective="nll")
    ppl, best = brute_force_best(bm, ids, ratio, lambda s: full_pass_ppl(bm, ids, s, 2))
    assert params(bm, chosen) <= ratio * bm.total_params()
    assert full_pass_ppl(bm, ids, chosen, batch_size=2) == pytest.approx(ppl, rel=1e-9)
    assert set(chosen) == best


def test_evo_by_kl_finds_the_set_closest_to_the_dense_model():
    bm = BlockModel(tiny_model("qwen2", layers=4))
    ids = tiny_ids(6, 16)
    chosen = evo_search(bm, ids, 0.25, seed=0)  # the default objective; vocabulary < TOP_K
    kl, best = brute_force_best(bm, ids, 0.25, lambda s: kl_from_dense(bm, ids, s))
    assert set(chosen) == best and kl_from_dense(bm, ids, chosen) == pytest.approx(kl, rel=1e-5)


def test_evo_spends_the_budget_and_is_seeded():
    bm = BlockModel(tiny_model("llama", layers=6))
    ids = tiny_ids(6, 16)
    budget = 0.3 * bm.total_params()
    chosen = evo_search(bm, ids, 0.3, seed=7, generations=5)
    left = budget - params(bm, chosen)
    assert left >= 0 and all(bm.block_params(b) > left for b in bm.candidates() if b not in chosen)
    assert evo_search(bm, ids, 0.3, seed=7, generations=5) == chosen  # the same seed: same set


def test_evo_runs_in_the_engine_loop_and_resumes():
    bm = BlockModel(tiny_model("llama", layers=5))
    ids = tiny_ids(6, 16)
    config = SearchConfig(method="evo", param_ratio=0.3, batch_size=2)
    saved: list[SearchState] = []
    state = run_method(bm, ids, config, on_iteration=saved.append)
    blocks = state.removed_blocks
    assert state.done and blocks == evo_search(bm, ids, 0.3, batch_size=2)
    for n, r in enumerate(state.removed, 1):  # each step's PPL is a full pass's
        assert r.ppl == pytest.approx(full_pass_ppl(bm, ids, blocks[:n], batch_size=2), rel=1e-6)
    resumed = run_method(bm, ids, config, saved[1])
    assert resumed.removed == state.removed
    other = SearchState(removed=list(reversed(state.removed)))
    with pytest.raises(UserError, match="prefix"):
        run_method(bm, ids, config, other)


def test_evo_checkpoints_each_generation_and_a_resume_from_any_picks_the_same_set():
    """A job stopped in the evolution (cancel, a worker that died) and resumed from its last
    checkpoint chooses what the search that never stopped chose, with fewer generations run."""
    bm = BlockModel(tiny_model("llama", layers=5))
    ids = tiny_ids(6, 16)
    config = SearchConfig(method="evo", param_ratio=0.3, batch_size=2)
    saved: list[SearchState] = []
    progress: list[Progress] = []
    whole = run_method(bm, ids, config, on_iteration=saved.append, on_progress=progress.append)
    evolving = [s for s in saved if not s.removed]  # the checkpoints before the removals
    generations = [s.evolution.generation for s in evolving]
    assert generations == list(range(1, len(evolving) + 1)) and len(evolving) >= 3
    assert all(s.evolution == whole.evolution for s in saved if s.removed)  # kept after
    assert whole.evolution.done and [p.generation for p in progress if p.generation] == generations
    middle = SearchState.from_json(evolving[1].to_json())  # as a worker stores and reads it
    assert middle.evolution == evolving[1].evolution and not middle.evolution.done
    resumed = run_method(bm, ids, config, middle, on_progress=progress.append)
    assert resumed.removed == whole.removed and resumed.evolution == whole.evolution

    stops = iter([False] * 2 + [True] * 1000)  # polled once per generation: stops in the third
    partial = run_method(bm, ids, config, evolving[0], should_stop=lambda: next(stops))
    assert not partial.done and not partial.removed
    assert partial.evolution.generation == evolving[0].evolution.generation + 2
    assert run_method(bm, ids, config, partial).removed == whole.removed


def test_evo_needs_a_budget():
    bm = BlockModel(tiny_model("llama", layers=3))
    with pytest.raises(UserError, match="param_ratio"):
        run_method(bm, tiny_ids(4, 16), SearchConfig(method="evo", num_blocks=2))
    spec = {"model": "builtin:smollm2-135m", "calibration": "x.txt", "method": "evo"}
    with pytest.raises(UserError, match="num_blocks: evo searches .* give param_ratio"):
        JobSpec.parse({**spec, "num_blocks": 4})
    assert JobSpec.parse({**spec, "param_ratio": 0.2}).method == "evo"
    with pytest.raises(UserError, match="param_ratio"):
        run_method(bm, tiny_ids(4, 16), SearchConfig(method="evo", param_ratio=0.001))


def test_the_progress_bar_counts_evo_generations_locally_and_when_polled():
    from contract import Phase
    from core.progress import SearchBar

    for feed in ("scored", "snapshot"):
        bar = SearchBar()
        p = Progress(generation=7, generations=100, best_fitness=0.25)
        bar.scored(p) if feed == "scored" else bar.snapshot(Phase.SEARCHING, p, [])
        assert (bar.bar.n, bar.bar.total, bar.bar.unit) == (7, 100, "gen")
        assert bar.bar.desc.startswith("evo generation") and "0.2500" in bar.bar.postfix
        bar.close()
