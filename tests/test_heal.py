"""Healing (core/heal.py): the folded map is the least-squares one, it never makes the stream
after a span worse, and `healed` gives the weights back."""

import pytest
import torch
from conftest import tiny_ids, tiny_model

from contract import Block
from core.blocks import BlockModel
from core.heal import heal, healed, spans


def stream_after(bm: BlockModel, ids, skip: set[int], end: int) -> torch.Tensor:
    """The residual stream entering position `end`, with the positions in `skip` removed."""
    h = bm.embed(ids)
    for pos in range(end):
        if pos not in skip:
            h = bm.run_block(pos, h)
    return h


def test_spans_are_runs_of_removed_positions():
    bm = BlockModel(tiny_model("llama", layers=4))
    removed = [Block("mlp", 2), Block("mha", 0), Block("mha", 2), Block("mlp", 0)]
    assert spans(bm, removed) == [[0, 1], [4, 5]]


def test_the_folded_map_is_the_least_squares_fit_of_the_stream(arch):
    bm = BlockModel(tiny_model(arch, layers=4))
    ids = tiny_ids(6, 16)
    removed = [Block("mlp", 1), Block("mha", 2)]  # one span: positions 3 and 4, healed into 2
    skip = {3, 4}
    with torch.no_grad():
        target = stream_after(bm, ids, set(), 5)  # the dense model after the span
        unhealed = stream_after(bm, ids, skip, 5)
    (span,) = heal(bm, ids, removed, batch_size=4)
    assert span.into == Block("mha", 1) and span.removed == removed
    with torch.no_grad():
        after = stream_after(bm, ids, skip, 5)
    error = lambda h: (h - target).double().pow(2).sum(-1).mean().item()  # noqa: E731
    assert error(unhealed) == pytest.approx(span.error_before, rel=1e-4)
    assert error(after) == pytest.approx(span.error_after, rel=1e-3)
    assert span.error_after < span.error_before


def test_healed_restores_the_weights():
    model = tiny_model("qwen2", layers=3)
    bm = BlockModel(model)
    ids = tiny_ids(4, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    removed = [Block("mlp", 1)]
    with healed(bm, ids, removed) as done:
        changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
        assert changed == ["model.layers.1.self_attn.o_proj.weight"] and len(done) == 1
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
