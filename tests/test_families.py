"""Every family of core.families beyond the first four (Phi-3, Gemma 2, Gemma 3, OLMo 2, and the
mixtures of experts Mixtral, Qwen2-MoE, Qwen3-MoE) passes the engine's four equivalences on a
tiny random model: cached scoring == full passes, the search == the plain greedy, removal ==
zeroed output projections, and the export == the in-memory pruned model (logits and generate(),
in the general layout and the plain one)."""

import pytest
import torch
from conftest import MOE_FAMILIES, MORE_FAMILIES, greedy_tokens, tiny_ids, tiny_model

from contract import Block, UserError
from contract.blocks import layer_blocks
from core.blocks import BlockModel
from core.export import export_pruned, load_pruned
from core.families import moe_supported
from core.naive import full_pass_ppl, plain_greedy_search
from core.search import SearchConfig, run_search, score_candidates

RECORD = dict(base_ppl=10.0, calibration={"dataset": "tiny", "samples": 6, "seq_len": 16}, seed=0)
MIXED = [Block("mha", 1), Block("mlp", 1), Block("mlp", 3), Block("mha", 0)]


@pytest.fixture(params=list(MORE_FAMILIES))
def family(request) -> str:
    if request.param in MOE_FAMILIES and not moe_supported():
        pytest.skip("mixtures of experts need transformers 5")
    return request.param


def zeroed(model, removed):
    """`model` with every output projection of the removed blocks' branches zeroed: o_proj, and
    down_proj, of every expert and of the shared expert in a mixture."""
    bm = BlockModel(model)
    with torch.no_grad():
        for block in removed:
            outputs = [
                p
                for n, p in bm.branch(block).named_parameters()
                if "o_proj" in n or "down_proj" in n
            ]
            assert outputs, block
            for p in outputs:
                p.zero_()
    return model


def test_cached_scoring_equals_full_passes(family):
    bm = BlockModel(tiny_model(family))
    ids = tiny_ids(5, 16)
    removed = [Block("mlp", 1), Block("mha", 3)]
    candidates = [b for b in bm.candidates() if b not in removed]
    cached = score_candidates(bm, ids, removed, candidates, batch_size=2)
    for block in candidates:
        assert cached[block] == full_pass_ppl(bm, ids, removed + [block], batch_size=2)
    assert len(set(cached.values())) > 1


def test_search_equals_plain_greedy(family):
    bm = BlockModel(tiny_model(family))
    ids = tiny_ids(4, 16)
    state = run_search(bm, ids, SearchConfig(num_blocks=4, batch_size=2))
    expected = plain_greedy_search(bm, ids, 4, batch_size=2)
    assert [r.model_dump() for r in state.removed] == expected


def test_removal_equals_zeroed_output_projections(family):
    ids = tiny_ids(3, 20)  # past the sliding windows (6)
    model = tiny_model(family)
    with torch.no_grad():
        dense = model(ids).logits
    torch.testing.assert_close(BlockModel(model).forward_logits(ids), dense, rtol=0, atol=1e-5)
    pruned = BlockModel(model).forward_logits(ids, MIXED)
    with torch.no_grad():
        expected = zeroed(model, MIXED)(ids).logits
    torch.testing.assert_close(pruned, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(pruned, dense, atol=1e-3)


@pytest.mark.parametrize("layout", ["general", "plain"])
def test_export_computes_and_generates_as_the_in_memory_model(family, layout, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(family)
    removed = MIXED if layout == "general" else layer_blocks(1) + layer_blocks(2)
    record = [{**b.model_dump(), "ppl": 11.0} for b in removed]
    out = export_pruned(model, None, record, tmp_path / family, **RECORD)
    bm = BlockModel(model)
    ids = tiny_ids(2, 20)
    expected = bm.forward_logits(ids, removed)
    remote = {"trust_remote_code": True} if layout == "general" else {}
    loaded = {
        "core": load_pruned(out),
        "transformers": AutoModelForCausalLM.from_pretrained(out, dtype="auto", **remote).eval(),
    }
    prompt = ids[:, :5]
    reference = greedy_tokens(bm, prompt, removed)
    for name, pruned in loaded.items():
        with torch.no_grad():
            torch.testing.assert_close(pruned(ids).logits, expected, rtol=0, atol=1e-5)
        tokens = pruned.generate(prompt, max_new_tokens=8, do_sample=False)
        assert torch.equal(tokens, reference), name


def test_healing_refuses_a_block_it_cannot_fold_into():
    from core.heal import fit_healing

    bm = BlockModel(tiny_model("gemma2"))
    with pytest.raises(UserError, match="heal: .*no plain one"):
        fit_healing(bm, tiny_ids(4, 16), [Block("mlp", 1)], 2)
