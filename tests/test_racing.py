"""Racing search: exact at an infinite margin, exact PPLs always, and an adaptive cut that keeps
a candidate whose early sequences make it look bad."""

import json
import math

import pytest
import torch
from conftest import tiny_ids, tiny_model

from contract import Block, JobSpec, SearchState, UserError
from contract.racing import race_stages, stage_chunks, survivors
from core.activations import ActivationCache, ppl_from_nlls
from core.blocks import BlockModel
from core.naive import full_pass_ppl
from core.racing import race_iteration
from core.search import SearchConfig, run_search


def picks(state: SearchState) -> list[tuple[str, int, float]]:
    return [(r.kind, r.layer, r.ppl) for r in state.removed]


# ---- the cut on made-up NLLs ----------------------------------------------------------------
def test_survivors_keep_the_leader_and_drop_a_consistently_worse_candidate():
    nlls = [
        [2.0, 3.0, 2.5, 4.0],  # leader (mean 2.875)
        [3.5, 4.5, 4.0, 5.5],  # 1.5 worse on every sequence: past the race's spread, dropped
        [1.0, 4.9, 2.0, 4.0],  # worse on average, but by a wide spread: kept
        [2.0, 3.0, 2.5, 4.0],  # a tie with the leader: kept
    ]
    assert survivors(nlls, total=16, margin=3.0) == [0, 2, 3]
    assert survivors(nlls, total=16, margin=0.0) == [0, 3]
    assert survivors(nlls, total=16, margin=math.inf) == [0, 1, 2, 3]
    assert survivors([r[:1] for r in nlls], total=16, margin=3.0) == [
        0,
        1,
        2,
        3,
    ]  # no spread from 1


def test_a_candidate_whose_few_differences_agree_is_judged_by_the_races_spread():
    """Heavy tails: 4 sequences on which a block trails by the same 0.5 say little about the
    12 to come when the other candidates' differences spread widely; alone with the leader,
    its own (zero) spread and the race's are the same, and it is dropped."""
    leader, steady, wide = [2.0, 3.0, 2.5, 4.0], [2.5, 3.5, 3.0, 4.5], [1.0, 4.9, 2.0, 4.0]
    assert survivors([leader, steady, wide], total=16, margin=3.0) == [0, 1, 2]
    assert survivors([leader, steady], total=16, margin=3.0) == [0]
    # Its own wider spread still counts where the race's is narrow.
    assert survivors([leader, wide, steady, leader], total=16, margin=3.0) == [0, 1, 2, 3]


def test_the_margin_shrinks_as_fewer_sequences_are_left():
    nlls = [[2.0, 3.0, 2.5, 4.0], [1.5, 4.9, 2.0, 4.4]]
    assert survivors(nlls, total=400, margin=1.0) == [0, 1]
    assert survivors(nlls, total=5, margin=1.0) == [0]  # 1 sequence left cannot close the gap


def test_stages_double_and_end_on_whole_batches():
    assert race_stages(16, None, None) == [4, 8, 16]
    assert race_stages(16, 2, 2 * 3) == [6, 12, 16]
    assert race_stages(40, None, None) == [10, 20, 40]
    assert race_stages(9, 3, None) == [6, 9]
    assert [stage_chunks([4, 8, 16], k, 4) for k in range(3)] == [
        range(1),
        range(1, 2),
        range(2, 4),
    ]
    assert [stage_chunks([4, 8, 10], k, 2) for k in range(3)] == [
        range(2),
        range(2, 4),
        range(4, 5),
    ]
    assert stage_chunks([4, 8, 10], 2, 4) == range(2, 3)  # the last chunk holds 2 sequences


# ---- racing on tiny models -------------------------------------------------------------------
@pytest.mark.parametrize("budget", [None, 0])
def test_racing_with_an_infinite_margin_is_the_exact_search(arch, budget):
    bm = BlockModel(tiny_model(arch, layers=4))
    ids = tiny_ids(12, 16)
    exact = run_search(bm, ids, SearchConfig(num_blocks=4, batch_size=2, cache_budget=budget))
    config = SearchConfig(
        num_blocks=4, batch_size=2, cache_budget=budget, search="racing", race_margin=math.inf
    )
    raced = run_search(bm, ids, config)
    assert picks(raced) == picks(exact) and raced.base_ppl == exact.base_ppl
    assert [s.raced for s in raced.races[0].stages] == [8, 8, 8]  # nobody was dropped


def test_racing_records_exact_ppls_and_its_stages(arch):
    bm = BlockModel(tiny_model(arch, layers=4))
    ids = tiny_ids(16, 16)
    state = run_search(bm, ids, SearchConfig(num_blocks=3, search="racing"))
    removed: list[Block] = []
    for r in state.removed:
        removed.append(Block(r.kind, r.layer))
        assert r.ppl == full_pass_ppl(bm, ids, removed, batch_size=4)  # full-set, bit for bit
    assert [r.iteration for r in state.races] == [1, 2, 3]
    for race, r in zip(state.races, state.removed, strict=True):
        assert [s.sequences for s in race.stages] == [4, 8, 16]
        assert [(k.kind, k.layer) for k in race.stages[-1].kept] == [(r.kind, r.layer)]
        raced = [s.raced for s in race.stages]
        assert raced == sorted(raced, reverse=True) and 0 < race.work <= 1
    assert SearchState.from_json(json.loads(json.dumps(state.to_json()))) == state


def _adversarial_order(bm: BlockModel, pool: torch.Tensor) -> tuple[torch.Tensor, Block, Block]:
    """16 sequences of `pool` in an order where the exact winner W trails the leader on the
    first 4 because of one sequence, and wins over all 16 by its other sequences."""
    cache = ActivationCache(bm, pool, 1)
    cache.build([])
    blocks = bm.candidates()
    nlls = torch.stack([cache.sequence_nlls((b,))[0] for b in blocks])
    order = sorted(range(len(blocks)), key=lambda i: nlls[i].mean().item())
    w, r = order[0], order[1]  # the best and the runner-up over the pool
    delta = nlls[w] - nlls[r]  # < 0 where W is better
    by_delta = sorted(range(len(pool)), key=lambda j: delta[j].item())
    worst = by_delta[-1]  # W's worst sequence against R
    mild = [j for j in by_delta if abs(delta[j]) < delta[worst] / 4 and j != worst][:3]
    rest = [j for j in by_delta if j not in mild and j != worst][:12]  # W's best ones
    return pool[[worst, *mild, *rest]], blocks[w], blocks[r]


def test_a_candidate_that_looks_bad_early_but_wins_late_is_kept():
    bm = BlockModel(tiny_model("llama", layers=4, seed=3))
    ids, winner, runner_up = _adversarial_order(bm, tiny_ids(48, 16, seed=5))
    cache = ActivationCache(bm, ids, 4)
    cache.build([])
    first = {b: cache.sequence_nlls((b,), range(1))[0] for b in bm.candidates()}
    leader = min(first, key=lambda b: first[b].mean().item())
    assert leader != winner and first[winner].mean() > first[leader].mean()  # behind at first

    units = [(b,) for b in bm.candidates()]
    raced = race_iteration(cache, units, [4, 8, 16], 3.0, 1)
    assert raced is not None
    ppl, unit, record = raced
    exact = {b: ppl_from_nlls(cache.sequence_nlls((b,))[0]) for b in bm.candidates()}
    assert unit == (winner,) and ppl == exact[winner] == min(exact.values())
    assert any((k.kind, k.layer) == (winner.kind, winner.layer) for k in record.stages[0].kept)
    # On 8 candidates of a tiny random model the race's spread is wide, and margin 3 keeps all
    # to the last stage; a smaller one cuts early, and keeps the late winner too.
    _, tight, cut = race_iteration(cache, units, [4, 8, 16], 1.0, 1)  # type: ignore[misc]
    assert tight == (winner,) and cut.work < 1 and len(cut.stages[1].kept) < cut.stages[1].raced
    # The fixed cut this replaces keeps only the leader: it would have lost the winner.
    assert race_iteration(cache, units, [4, 8, 16], 0.0, 1)[1] != (winner,)  # type: ignore[index]


def test_verify_reports_a_disagreement_with_both_ppls():
    bm = BlockModel(tiny_model("llama", layers=4, seed=3))
    ids, winner, _ = _adversarial_order(bm, tiny_ids(48, 16, seed=5))
    config = SearchConfig(num_blocks=1, batch_size=4, search="racing", race_margin=0.0, verify=True)
    race = run_search(bm, ids, config).races[0]
    assert race.agrees is False
    assert (race.exact.kind, race.exact.layer) == (winner.kind, winner.layer)
    assert race.exact.ppl < run_search(bm, ids, config).removed[0].ppl
    agreed = run_search(
        bm, ids, SearchConfig(num_blocks=1, batch_size=4, search="racing", verify=True)
    )
    assert agreed.races[0].agrees is True


def test_a_racing_search_resumes_exactly():
    bm = BlockModel(tiny_model("qwen2", layers=4))
    ids = tiny_ids(16, 16)
    config = SearchConfig(num_blocks=4, search="racing")
    full = run_search(bm, ids, config)
    saved: list[SearchState] = []
    run_search(bm, ids, SearchConfig(num_blocks=2, search="racing"), on_iteration=saved.append)
    resumed = run_search(bm, ids, config, SearchState.from_json(saved[-1].to_json()))
    assert picks(resumed) == picks(full) and resumed.races == full.races


def test_racing_sleb_removes_layers_like_exact_sleb_at_infinite_margin():
    from core.methods import run_method

    bm = BlockModel(tiny_model("mistral", layers=5))
    ids = tiny_ids(8, 16)
    exact = run_method(bm, ids, SearchConfig(method="sleb", num_blocks=4, batch_size=4))
    raced = run_method(
        bm, ids, SearchConfig(method="sleb", num_blocks=4, search="racing", race_margin=math.inf)
    )
    assert picks(raced) == picks(exact)
    assert len(raced.races[0].stages[-1].kept) == 2  # a layer: both its blocks


# ---- the contract ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "values, field",
    [
        ({"search": "racing", "samples": 4}, "samples"),
        ({"search": "racing", "samples": 16, "race_slice": 16}, "race_slice"),
        ({"search": "racing", "samples": 16, "race_slice": 2}, "race_slice"),
        ({"search": "racing", "samples": 16, "race_slice": 6, "batch_size": 4}, "race_slice"),
        ({"search": "racing", "method": "shortgpt", "samples": 16}, "search"),
        ({"race_slice": 4, "samples": 16}, "race_slice"),
        ({"search": "racing", "samples": 16, "race_margin": -1}, "race_margin"),
        ({"search": "fast"}, "search"),
        ({"search": "racing", "samples": 16, "batch_size": 16}, "batch_size"),
    ],
)
def test_bad_racing_settings_name_the_field(values, field):
    with pytest.raises(UserError) as e:
        JobSpec.parse({"model": "m", "calibration": "c", "num_blocks": 2, **values})
    assert e.value.field == field


def test_exact_search_keeps_old_hashes_and_racing_changes_them():
    spec = JobSpec(model="m", calibration="c", num_blocks=2, samples=16)
    assert "search" not in spec.result_fields() and "race_margin" not in spec.result_fields()
    racing = spec.model_copy(update={"search": "racing"})
    assert racing.config_hash() != spec.config_hash()
    with pytest.raises(UserError, match="search: 'exact' in the state, 'racing' now"):
        SearchState.new(spec).check_resumable(racing)


def test_racing_needs_more_sequences_than_its_first_slice():
    bm = BlockModel(tiny_model("llama", layers=2))
    with pytest.raises(UserError) as e:
        run_search(bm, tiny_ids(4, 8), SearchConfig(num_blocks=1, search="racing"))
    assert e.value.field == "samples"


# ---- the CLI ---------------------------------------------------------------------------------
def test_cli_racing_with_verify_reports_its_stages_and_agreement(tmp_path, capsys):
    from conftest import random_text, word_tokenizer

    from blockprune.cli import main

    tiny_model("llama", layers=4).save_pretrained(tmp_path / "model")
    word_tokenizer().save_pretrained(tmp_path / "model")
    (tmp_path / "calib.txt").write_text(random_text(600))
    common = ["--model", str(tmp_path / "model"), "--calibration", str(tmp_path / "calib.txt")]
    common += ["--samples", "16", "--seq-len", "16", "--num-blocks", "2"]
    out, exact_out = tmp_path / "raced", tmp_path / "exact"
    args = ["prune", *common, "--search", "racing", "--race-slice", "4", "--output", str(out)]
    assert main([*args, "--verify"]) == 0
    printed = capsys.readouterr().out
    assert main(["prune", *common, "--batch-size", "4", "--output", str(exact_out)]) == 0
    info = json.loads((out / "pruning.json").read_text())
    exact = json.loads((exact_out / "pruning.json").read_text())
    search = info["search"]
    assert search["mode"] == "racing" and search["stage_sequences"] == [4, 8, 16]
    assert search["verified"] == 2 and len(search["iterations"]) == 2
    agreeing = not search["disagreements"]
    assert agreeing == (info["removed"] == exact["removed"])
    assert exact["search"] == {"mode": "exact"}
    assert (
        "racing on 4/8/16 sequences" in printed
        and "Searched by racing" in (out / "README.md").read_text()
    )
    capsys.readouterr()
    assert main(["prune", *common, "--verify", "--output", str(tmp_path / "x")]) == 2
    assert "verify: checks a racing search" in capsys.readouterr().err
