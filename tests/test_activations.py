"""Any cache budget gives the same picks and PPLs (==) as the full cache; only the work changes."""

import pytest
from conftest import tiny_ids, tiny_model

from contract.memory import cache_layout
from core.activations import ActivationCache
from core.blocks import BlockModel
from core.naive import plain_greedy_search
from core.search import CandidateScorer, SearchConfig, run_search

SAMPLES, SEQ = 6, 16


def position_bytes(bm: BlockModel) -> int:
    return SAMPLES * SEQ * bm.config.hidden_size * 4


# From "all" down to one position and none: a full cache holding the winner, a full cache
# with no room to hold it, half the positions, one, and none (recompute from the embeddings).
def budgets(bm: BlockModel) -> dict[str, int | None]:
    s, kept = position_bytes(bm), bm.num_positions - 1
    return {
        "all": None,
        "all, no hold": kept * s,
        "half": kept // 2 * s,
        "one position": s,
        "none": 0,
    }


def test_layout_spaces_kept_positions_evenly():
    assert cache_layout(8, 10, None).kept == (1, 2, 3, 4, 5, 6, 7)
    assert cache_layout(8, 10, 70).kept == (1, 2, 3, 4, 5, 6, 7)
    assert cache_layout(8, 10, 30).kept == (2, 4, 6)
    assert cache_layout(8, 10, 10).kept == (4,)
    assert cache_layout(8, 10, 9).kept == ()
    layout = cache_layout(8, 10, 20, host_budget=25)  # 2 on the device, 2 more on the host
    assert layout.kept == (1, 3, 4, 6) and layout.on_device == {1, 3}
    assert layout.bytes() == (20, 20)
    assert [layout.start(p) for p in range(8)] == [0, 1, 1, 3, 4, 4, 6, 6]


def test_every_budget_gives_identical_search(arch):
    bm = BlockModel(tiny_model(arch, layers=4))
    ids = tiny_ids(SAMPLES, SEQ)
    runs = {
        name: run_search(bm, ids, SearchConfig(num_blocks=5, batch_size=4, cache_budget=budget))
        for name, budget in budgets(bm).items()
    }
    reference = runs["all"]
    for name, state in runs.items():
        assert state.removed == reference.removed, name  # blocks and PPLs, ==
        assert (state.base_ppl, state.final_ppl) == (reference.base_ppl, reference.final_ppl)
    plain = plain_greedy_search(bm, ids, 5, batch_size=4)
    assert [r.model_dump() for r in reference.removed] == plain


def test_host_tier_gives_identical_search():
    bm = BlockModel(tiny_model("llama", layers=4))
    ids = tiny_ids(SAMPLES, SEQ)
    s = position_bytes(bm)
    full = run_search(bm, ids, SearchConfig(num_blocks=4))
    tiered = run_search(bm, ids, SearchConfig(num_blocks=4, cache_budget=2 * s, host_budget=3 * s))
    assert tiered.removed == full.removed


def test_smaller_budgets_do_more_work_and_hold_only_what_fits(monkeypatch):
    bm = BlockModel(tiny_model("llama", layers=4))
    ids = tiny_ids(SAMPLES, SEQ)
    reruns: list[str] = []
    original = ActivationCache.rerun
    monkeypatch.setattr(
        ActivationCache,
        "rerun",
        lambda self, block: reruns.append(str(block)) or original(self, block),
    )
    work = {}
    for name, budget in budgets(bm).items():
        reruns.clear()
        cache = ActivationCache(bm, ids, None, budget)
        cache.build([])
        keep = cache.can_hold((bm.candidates()[0],))
        run_search(bm, ids, SearchConfig(num_blocks=3, cache_budget=budget))
        work[name] = _work(bm, ids, budget)
        # the winner's activations are recomputed only when they could not be held (a winner
        # with no kept position after it has nothing to hold)
        assert bool(reruns) == (name in ("all, no hold", "half", "one position")), name
        assert keep == (name in ("all", "none")), name
    assert work["all"] < work["half"] < work["one position"] < work["none"]


def _work(bm: BlockModel, ids, budget: int | None) -> int:
    cache = ActivationCache(bm, ids, None, budget)
    cache.build([])
    for block in bm.candidates():
        cache.score((block,), keep=False)
    return cache.work


def test_candidate_scorer_under_a_budget_equals_full(arch):
    bm = BlockModel(tiny_model(arch, layers=3))
    ids = tiny_ids(SAMPLES, SEQ)
    removed = [bm.candidates()[1]]
    candidates = [b for b in bm.candidates() if b not in removed]
    full = CandidateScorer(bm, ids, 4).score(removed, candidates)
    tight = CandidateScorer(bm, ids, 4, cache_budget=position_bytes(bm)).score(removed, candidates)
    assert tight == full


@pytest.mark.parametrize("budget", ["8GiB", "512 MiB", "0", 1024])
def test_spec_takes_sizes_in_words(budget):
    from contract import JobSpec

    spec = JobSpec(
        model="builtin:smollm2-135m",
        calibration="builtin:stdlib-docs",
        num_blocks=1,
        cache_budget=budget,
    )
    assert isinstance(spec.cache_budget, int)
    assert "cache_budget" not in spec.result_fields()  # it never changes the result
