"""The engine's search equals the plain greedy search, bit for bit, and resumes exactly."""

import json

import pytest
import torch
from conftest import tiny_ids, tiny_model

from contract import Block, JobSpec, Progress, SearchState, UserError
from core.blocks import BlockModel
from core.naive import full_pass_ppl, plain_greedy_search
from core.search import SearchConfig, run_search, score_candidates


@pytest.fixture(scope="module")
def llama():
    return BlockModel(tiny_model("llama", layers=5))


def test_cached_scoring_equals_full_passes(arch):
    bm = BlockModel(tiny_model(arch, layers=4))
    ids = tiny_ids(7, 16)
    removed = [Block("mlp", 1), Block("mha", 3)]
    candidates = [b for b in bm.candidates() if b not in removed]
    cached = score_candidates(bm, ids, removed, candidates, batch_size=3)
    assert list(cached) == candidates
    for block in candidates:
        assert cached[block] == full_pass_ppl(bm, ids, removed + [block], batch_size=3)
    assert len(set(cached.values())) > 1  # the scores really tell the blocks apart


@pytest.mark.parametrize("block_types", ["mix", "mha", "mlp"])
def test_search_equals_plain_greedy(arch, block_types):
    bm = BlockModel(tiny_model(arch, layers=4))
    ids = tiny_ids(6, 16)
    n = 5 if block_types == "mix" else 3
    state = run_search(bm, ids, SearchConfig(num_blocks=n, block_types=block_types, batch_size=4))
    assert state.done and state.blocks_removed == n
    assert removed(state) == plain_greedy_search(bm, ids, n, block_types, batch_size=4)
    assert state.base_ppl == full_pass_ppl(bm, ids, [], batch_size=4)
    assert {r.kind for r in state.removed} <= (
        {"mha", "mlp"} if block_types == "mix" else {block_types}
    )


def test_resume_from_saved_state_equals_uninterrupted(llama):
    ids = tiny_ids(5, 16)
    config = SearchConfig(num_blocks=6)
    full = run_search(llama, ids, config)
    saved = []
    run_search(llama, ids, SearchConfig(num_blocks=2), on_iteration=saved.append)
    state = SearchState.from_json(json.loads(json.dumps(saved[-1].to_json())))  # a checkpoint
    assert state.blocks_removed == 2
    resumed = run_search(llama, ids, config, state)
    assert resumed.removed == full.removed
    assert resumed.base_ppl == full.base_ppl


def test_callbacks_report_every_candidate_and_iteration(llama):
    progress, iterations = [], []
    run_search(
        llama,
        tiny_ids(3, 12),
        SearchConfig(num_blocks=3),
        on_progress=progress.append,
        on_iteration=iterations.append,
    )
    per_iteration = [10, 9, 8]
    assert len(progress) == sum(per_iteration)
    assert all(isinstance(p, Progress) for p in progress)
    assert [p.scored for p in progress if p.scored == p.total_candidates] == per_iteration
    assert [p.iteration for p in progress] == [
        i for i, n in enumerate(per_iteration) for _ in range(n)
    ]
    # last_block is the candidate just scored; best_block/best_ppl the best of the iteration so far
    first = progress[: per_iteration[0]]
    assert [(p.last_block.kind, p.last_block.layer) for p in first] == [
        (b.kind, b.layer) for b in llama.candidates()
    ]
    assert all(p.best_ppl == min(q.best_ppl for q in first[: k + 1]) for k, p in enumerate(first))
    winner = iterations[0].removed[0]
    assert (first[-1].best_block.kind, first[-1].best_block.layer) == (winner.kind, winner.layer)
    assert first[-1].best_ppl == winner.ppl
    # each snapshot is a copy: later iterations did not change it
    assert [s.blocks_removed for s in iterations] == [1, 2, 3]
    assert [len(s.removed) for s in iterations] == [1, 2, 3]
    assert iterations[0].removed == iterations[2].removed[:1] and not iterations[0].done


def test_should_stop_returns_unfinished_state(llama):
    calls = iter(range(100))
    state = run_search(
        llama, tiny_ids(3, 12), SearchConfig(num_blocks=4), should_stop=lambda: next(calls) >= 12
    )
    assert not state.done and state.blocks_removed == 1  # 10 candidates, then 2 of the next


def test_ties_go_to_the_first_candidate():
    model = tiny_model("llama", layers=3)
    with torch.no_grad():  # every branch outputs zero: every removal gives the same PPL
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    state = run_search(BlockModel(model), tiny_ids(3, 12), SearchConfig(num_blocks=4))
    assert [(r.kind, r.layer) for r in state.removed] == [
        ("mha", 0),
        ("mha", 1),
        ("mha", 2),
        ("mlp", 0),
    ]


def test_param_ratio_stops_at_last_step_not_above(llama):
    ids = tiny_ids(4, 12)
    total = llama.total_params()
    ratio = 0.3
    state = run_search(llama, ids, SearchConfig(param_ratio=ratio))
    blocks = [Block(r.kind, r.layer) for r in state.removed]
    removed_params = sum(llama.block_params(b) for b in blocks)
    assert state.done and removed_params / total <= ratio
    longer = run_search(llama, ids, SearchConfig(num_blocks=len(blocks) + 1))
    assert longer.removed[: len(blocks)] == state.removed
    extra = Block(longer.removed[-1].kind, longer.removed[-1].layer)
    assert (removed_params + llama.block_params(extra)) / total > ratio


@pytest.mark.parametrize(
    "config, field",
    [
        (SearchConfig(), "num_blocks"),
        (SearchConfig(num_blocks=3, param_ratio=0.2), "num_blocks"),
        (SearchConfig(num_blocks=11), "num_blocks"),
        (SearchConfig(num_blocks=6, block_types="mha"), "num_blocks"),
        (SearchConfig(param_ratio=1.5), "param_ratio"),
        (SearchConfig(num_blocks=2, block_types="attn"), "block_types"),
        (SearchConfig(num_blocks=2, batch_size=0), "batch_size"),
    ],
)
def test_bad_search_config_names_the_field(llama, config, field):
    with pytest.raises(UserError) as e:
        run_search(llama, tiny_ids(2, 8), config)
    assert e.value.field == field


def test_a_finished_state_can_be_extended(llama):
    ids = tiny_ids(4, 12)
    short = run_search(llama, ids, SearchConfig(num_blocks=2))
    stopped = run_search(llama, ids, SearchConfig(num_blocks=4), short, should_stop=lambda: True)
    assert not stopped.done  # not the finished flag of the state it started from
    assert short.done and short.blocks_removed == 2  # the state passed in is left as it was
    longer = run_search(llama, ids, SearchConfig(num_blocks=4), short)
    assert (
        longer.done and longer.removed == run_search(llama, ids, SearchConfig(num_blocks=4)).removed
    )


def test_search_state_json_round_trip(llama):
    spec = JobSpec(model="m", calibration="c", num_blocks=2, seq_len=16)
    state = run_search(llama, tiny_ids(3, 12), SearchConfig.of(spec), SearchState.new(spec))
    data = json.loads(json.dumps(state.to_json()))
    assert data["spec"] == spec.result_fields() and data["blocks_removed"] == 2
    assert SearchState.from_json(data) == state
    state.check_resumable(spec.model_copy(update={"num_blocks": 5, "batch_size": 2}))


def test_an_old_state_without_spec_is_read_and_resumable():
    spec = JobSpec(model="m", calibration="c", num_blocks=2)
    old = {  # as states were saved before they carried their spec
        "config_hash": spec.config_hash(),
        "base_ppl": 3.5,
        "removed": [{"block": "mlp", "layer": 1, "ppl": 4.25}],
        "iteration": 1,
    }
    state = SearchState.from_json(old)
    assert state.spec is None and state.blocks_removed == 1 and state.base_ppl == 3.5
    assert [r.model_dump() for r in state.removed] == old["removed"]
    state.check_resumable(spec)
    with pytest.raises(UserError, match="config hash") as e:
        state.check_resumable(spec.model_copy(update={"seq_len": 8}))
    assert e.value.code == "state_mismatch"


@pytest.mark.parametrize(
    "target", [{"num_blocks": 0}, {"param_ratio": 1.0}, {"num_blocks": 2, "batch_size": 0}]
)
def test_search_config_bounds_are_jobspec_bounds(target):
    with pytest.raises(UserError) as from_config:
        SearchConfig(**target).check()
    with pytest.raises(UserError) as from_spec:
        JobSpec.parse({"model": "m", "calibration": "c", **target})
    assert str(from_config.value) == str(from_spec.value)


def removed(state: SearchState) -> list[dict]:
    return [r.model_dump() for r in state.removed]


@pytest.mark.parametrize("shares", [1, 2, 3])
def test_shares_scored_apart_pick_what_the_search_picks(arch, shares):
    """An iteration's candidates split into shares, each scored by its own CandidateScorer
    (as workers would) or by one reused across shares, then the lowest PPL with ties to the
    first in paper order: the same picks and PPLs as run_search, with ==."""
    from core.search import CandidateScorer

    bm = BlockModel(tiny_model(arch, layers=3, seed=2))
    ids = tiny_ids(5, 12)
    expected = run_search(bm, ids, SearchConfig(num_blocks=3, batch_size=2))
    reused = CandidateScorer(bm, ids, batch_size=2)
    removed: list[Block] = []
    picks = []
    for iteration in range(3):
        candidates = [b for b in bm.candidates("mix") if b not in removed]
        scores: dict[Block, float] = {}
        for n in range(shares):
            share = candidates[n::shares]
            scorer = reused if iteration % 2 else CandidateScorer(bm, ids, batch_size=2)
            reported: list[tuple[Block, float]] = []
            on_score = lambda b, p, out=reported: out.append((b, p))  # noqa: E731
            scores |= scorer.score(removed, share, on_score=on_score)
            assert reported == [(b, scores[b]) for b in share]  # each score, as it is done
        order = {b: k for k, b in enumerate(candidates)}
        best = min(scores, key=lambda b: (scores[b], order[b]))
        removed.append(best)
        picks.append({"block": best.kind, "layer": best.layer, "ppl": scores[best]})
    assert picks == [r.model_dump() for r in expected.removed]
