"""Baseline methods behind the same interface: SLEB equals a brute-force layer greedy, ShortGPT's
Block Influence equals an independent computation, and both go through the pipeline's export."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_ids, tiny_model
from pydantic import ValidationError

from contract import Block, JobSpec, SearchState, UserError
from core.blocks import BlockModel
from core.methods import METHODS, run_method, shortgpt
from core.naive import full_pass_ppl
from core.search import SearchConfig


def layer(i: int) -> list[Block]:
    return [Block("mha", i), Block("mlp", i)]


def brute_force_layer_greedy(bm, ids, layers: int, batch_size=None) -> list[tuple[int, float]]:
    """SLEB as its paper states it: every step, a full forward pass per remaining layer."""
    removed: list[int] = []
    steps = []
    for _ in range(layers):
        scores = [
            (full_pass_ppl(bm, ids, [b for j in removed + [i] for b in layer(j)], batch_size), i)
            for i in range(bm.num_layers)
            if i not in removed
        ]
        ppl, best = min(scores, key=lambda s: s[0])  # min keeps the first (lowest layer) of ties
        removed.append(best)
        steps.append((best, ppl))
    return steps


def layers_of(state: SearchState) -> list[tuple[int, float]]:
    pairs = list(zip(state.removed[::2], state.removed[1::2], strict=True))
    for mha, mlp in pairs:  # a layer is recorded as its two blocks with one PPL
        assert (mha.kind, mlp.kind, mha.layer, mha.ppl) == ("mha", "mlp", mlp.layer, mlp.ppl)
    return [(mha.layer, mha.ppl) for mha, _ in pairs]


@pytest.mark.parametrize("budget", [None, 0, 2 * 6 * 16 * 32 * 4])
def test_sleb_equals_brute_force_layer_greedy(arch, budget):
    bm = BlockModel(tiny_model(arch, layers=5))
    ids = tiny_ids(6, 16)
    config = SearchConfig(method="sleb", num_blocks=6, batch_size=4, cache_budget=budget)
    state = run_method(bm, ids, config)
    assert state.done and state.blocks_removed == 6
    assert layers_of(state) == brute_force_layer_greedy(bm, ids, 3, batch_size=4)
    assert len({ppl for _, ppl in layers_of(state)}) == 3


def test_sleb_resumes_exactly_and_stops_at_the_ratio():
    bm = BlockModel(tiny_model("llama", layers=5))
    ids = tiny_ids(5, 16)
    full = run_method(bm, ids, SearchConfig(method="sleb", num_blocks=6))
    saved = []
    run_method(bm, ids, SearchConfig(method="sleb", num_blocks=2), on_iteration=saved.append)
    state = SearchState.from_json(json.loads(json.dumps(saved[-1].to_json())))
    resumed = run_method(bm, ids, SearchConfig(method="sleb", num_blocks=6), state)
    assert resumed.removed == full.removed
    per_layer = sum(bm.block_params(b) for b in layer(0))
    ratio = (2.5 * per_layer) / bm.total_params()  # room for two layers, not three
    capped = run_method(bm, ids, SearchConfig(method="sleb", param_ratio=ratio))
    assert capped.removed == full.removed[:4]


def independent_block_influence(model, ids) -> list[float]:
    """BI from the transformers model's own decoder layers (forward hooks), not BlockModel."""
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(i):
        def record(module, args, kwargs, output):
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            seen[i] = (h_in.detach(), h_out.detach())

        return record

    handles = [
        layer.register_forward_hook(hook(i), with_kwargs=True)
        for i, layer in enumerate(model.model.layers)
    ]
    with torch.no_grad():
        model(ids)
    for h in handles:
        h.remove()
    return [
        1 - F.cosine_similarity(a.double(), b.double(), dim=-1).mean().item()
        for a, b in (seen[i] for i in range(len(seen)))
    ]


def test_block_influence_equals_an_independent_computation(arch):
    model = tiny_model(arch, layers=5)
    ids = tiny_ids(4, 12)
    ours = shortgpt.block_influence(BlockModel(model), ids, batch_size=3)
    theirs = independent_block_influence(model, ids)
    assert ours == pytest.approx(theirs, abs=1e-5)
    assert len(set(shortgpt.removal_order(ours))) == 5
    assert max(ours) - min(ours) > 1e-3  # the scores tell the layers apart


def test_shortgpt_removes_the_lowest_influence_layers_with_their_ppls():
    model = tiny_model("qwen2", layers=6)
    bm = BlockModel(model)
    ids = tiny_ids(5, 16)
    order = shortgpt.removal_order(independent_block_influence(model, ids))
    state = run_method(bm, ids, SearchConfig(method="shortgpt", num_blocks=6, batch_size=2))
    assert [lay for lay, _ in layers_of(state)] == order[:3]
    for k, (_, ppl) in enumerate(layers_of(state)):
        gone = [b for i in order[: k + 1] for b in layer(i)]
        assert ppl == full_pass_ppl(bm, ids, gone, batch_size=2)
    assert state.base_ppl == full_pass_ppl(bm, ids, [], batch_size=2)
    # resumed from a checkpoint after the first layer: the same result
    partial = run_method(bm, ids, SearchConfig(method="shortgpt", num_blocks=2, batch_size=2))
    resumed = run_method(
        bm, ids, SearchConfig(method="shortgpt", num_blocks=6, batch_size=2), partial
    )
    assert resumed.removed == state.removed


def test_every_method_is_registered_under_its_contract_name():
    """METHOD_TRAITS is the one registry: the engine's objects, the job's choices (an enum in the
    API's schema) and its help are read from it."""
    from contract import JobSpec
    from contract.methods import METHOD_TRAITS

    assert tuple(METHODS) == tuple(METHOD_TRAITS)
    assert all(m.traits is METHOD_TRAITS[name] for name, m in METHODS.items())
    field = JobSpec.model_json_schema()["properties"]["method"]
    assert field["enum"] == list(METHOD_TRAITS)
    assert all(f"{name}: {t.summary}" in field["description"] for name, t in METHOD_TRAITS.items())
    with pytest.raises(ValidationError, match="blockpruner"):
        JobSpec(model="builtin:smollm2-135m", calibration="builtin:stdlib-docs", method="obs")


@pytest.mark.parametrize(
    "values, field",
    [
        ({"method": "sleb", "num_blocks": 3}, "num_blocks"),
        ({"method": "shortgpt", "num_blocks": 2, "block_types": "mlp"}, "block_types"),
    ],
)
def test_layer_methods_refuse_block_settings(values, field):
    base = {"model": "builtin:smollm2-135m", "calibration": "builtin:stdlib-docs"}
    with pytest.raises(UserError) as e:
        JobSpec.parse({**base, **values})
    assert e.value.field == field and values["method"] in e.value.message
    with pytest.raises(UserError) as e:  # the engine's own check, for callers without a spec
        SearchConfig(**values).check()
    assert e.value.field == field


def test_an_unknown_method_is_refused_with_the_known_ones():
    base = {"model": "builtin:smollm2-135m", "calibration": "builtin:stdlib-docs"}
    with pytest.raises(UserError) as e:
        JobSpec.parse({**base, "method": "lamp", "num_blocks": 2})
    assert e.value.field == "method" and "shortgpt" in e.value.message


def test_the_default_method_keeps_existing_hashes():
    spec = JobSpec(model="builtin:smollm2-135m", calibration="builtin:stdlib-docs", num_blocks=4)
    assert "method" not in spec.result_fields()
    sleb = spec.model_copy(update={"method": "sleb"})
    assert sleb.config_hash() != spec.config_hash()
    assert spec.differences(sleb.result_fields()) == [
        "method: 'sleb' in the state, 'blockpruner' now"
    ]
