"""The engine's search equals the plain greedy search, bit for bit, and resumes exactly."""

import json

import pytest
import torch
from conftest import tiny_ids, tiny_model

from core.blocks import Block, BlockModel
from core.errors import UserError
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
    assert state["done"] and state["iteration"] == n
    assert state["removed"] == plain_greedy_search(bm, ids, n, block_types, batch_size=4)
    assert state["base_ppl"] == full_pass_ppl(bm, ids, [], batch_size=4)
    assert {r["block"] for r in state["removed"]} <= (
        {"mha", "mlp"} if block_types == "mix" else {block_types}
    )


def test_resume_from_saved_state_equals_uninterrupted(llama):
    ids = tiny_ids(5, 16)
    config = SearchConfig(num_blocks=6)
    full = run_search(llama, ids, config)
    saved = []
    run_search(llama, ids, SearchConfig(num_blocks=2), on_iteration=saved.append)
    state = json.loads(json.dumps(saved[-1]))  # through JSON, as a checkpoint would be
    assert state["iteration"] == 2
    resumed = run_search(llama, ids, config, state)
    assert resumed["removed"] == full["removed"]
    assert resumed["base_ppl"] == full["base_ppl"]


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
    assert [p["scored"] for p in progress if p["scored"] == p["total_candidates"]] == per_iteration
    assert [s["iteration"] for s in iterations] == [1, 2, 3]
    assert [len(s["removed"]) for s in iterations] == [1, 2, 3]


def test_should_stop_returns_unfinished_state(llama):
    calls = iter(range(100))
    state = run_search(
        llama, tiny_ids(3, 12), SearchConfig(num_blocks=4), should_stop=lambda: next(calls) >= 12
    )
    assert not state["done"] and state["iteration"] == 1  # 10 candidates, then 2 of the next


def test_ties_go_to_the_first_candidate():
    model = tiny_model("llama", layers=3)
    with torch.no_grad():  # every branch outputs zero: every removal gives the same PPL
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    state = run_search(BlockModel(model), tiny_ids(3, 12), SearchConfig(num_blocks=4))
    assert [(r["block"], r["layer"]) for r in state["removed"]] == [
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
    removed = [Block(r["block"], r["layer"]) for r in state["removed"]]
    removed_params = sum(llama.block_params(b) for b in removed)
    assert state["done"] and removed_params / total <= ratio
    longer = run_search(llama, ids, SearchConfig(num_blocks=len(removed) + 1))
    assert longer["removed"][: len(removed)] == state["removed"]
    extra = Block(longer["removed"][-1]["block"], longer["removed"][-1]["layer"])
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
    assert not stopped["done"]  # not the finished flag of the state it started from
    longer = run_search(llama, ids, SearchConfig(num_blocks=4), short)
    assert (
        longer["done"]
        and longer["removed"] == run_search(llama, ids, SearchConfig(num_blocks=4))["removed"]
    )
