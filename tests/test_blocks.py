"""Removing a block equals zeroing its output projection; unsupported models fail clearly."""

import pytest
import torch
from conftest import tiny_ids, tiny_model
from pydantic import ValidationError

from contract import Block, RemovedBlock, UserError
from core.blocks import BlockModel


def test_nothing_removed_equals_hf_forward(arch):
    model = tiny_model(arch)
    ids = tiny_ids(3, 20)  # longer than the sliding window of mistral/qwen2 fixtures
    with torch.no_grad():
        expected = model(ids).logits
    torch.testing.assert_close(BlockModel(model).forward_logits(ids), expected, rtol=0, atol=1e-5)


def test_removal_equals_zeroed_output_projections(arch):
    model = tiny_model(arch)
    ids = tiny_ids(3, 20)
    removed = [Block("mha", 1), Block("mlp", 1), Block("mlp", 3), Block("mha", 0)]
    pruned = BlockModel(model).forward_logits(ids, removed)
    with torch.no_grad():
        for b in removed:
            layer = model.model.layers[b.layer]
            proj = layer.self_attn.o_proj if b.kind == "mha" else layer.mlp.down_proj
            proj.weight.zero_()
        expected = model(ids).logits
    torch.testing.assert_close(pruned, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(pruned, BlockModel(tiny_model(arch)).forward_logits(ids), atol=1e-3)


def test_block_params_add_up():
    bm = BlockModel(tiny_model("llama", layers=3))
    blocks = sum(bm.block_params(b) for b in bm.candidates())
    rest = bm.total_params() - blocks  # embeddings, final norm, lm_head
    assert rest == sum(p.numel() for n, p in bm.model.named_parameters() if "layers" not in n)


def test_unsupported_architecture_names_the_supported_ones():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(UserError, match="gpt2.*llama, mistral, qwen2, qwen3"):
        BlockModel(model)


def test_block_json_round_trip_and_errors():
    block = Block("mlp", 3)
    assert block.model_dump() == {"block": "mlp", "layer": 3}  # the JSON of every layer
    assert Block.parse(block.model_dump()) == block == Block(kind="mlp", layer=3)
    assert Block.parse(["mlp", 3]) == block  # the pair that older work items stored
    assert len({block, Block("mlp", 3), Block("mha", 3)}) == 2  # hashable by value
    removed = RemovedBlock.of(block, 2.5)
    assert removed != block and removed.ref == block and str(removed) == "mlp.3"
    with pytest.raises(ValidationError):
        block.layer = 4  # type: ignore[misc]  # frozen: safe as a dict key
    with pytest.raises(UserError, match="removed\\[2\\].*'ffn'"):
        Block.parse({"block": "ffn", "layer": 1}, field="removed[2]")
    with pytest.raises(UserError, match="block"):
        Block.parse({"block": "mha", "layer": -1})
    with pytest.raises(UserError, match="out of range"):
        BlockModel(tiny_model("llama", layers=2)).position(Block("mha", 5))
