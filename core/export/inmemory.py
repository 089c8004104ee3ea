"""The in-memory pruned model: the base model with some blocks swapped for the export's no-op
modules, for as long as a `with` lasts. What it computes is what the export computes (the same
modules), so evaluating it is evaluating the export, without writing and reloading weights."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from contract import Block
from core.blocks import BlockModel
from core.export.hf_modeling_template import apply_block_configs


def block_configs(num_layers: int, removed: Iterable[Block]) -> list[dict]:
    """The export's per-layer `block_configs` for `removed` (no layer dropped)."""
    gone = set(removed)
    return [
        {
            "attention": {"no_op": Block(kind="mha", layer=i) in gone},
            "ffn": {"no_op": Block(kind="mlp", layer=i) in gone},
        }
        for i in range(num_layers)
    ]


@contextmanager
def pruned_view(model: Any, removed: Iterable[Block]) -> Iterator[Any]:
    """`model` with the `removed` blocks made no-ops inside the `with`, restored after (also on
    an error). The weights are not copied: a 7B model needs no second copy to be evaluated."""
    bm = BlockModel(model)
    parts = bm.family.export_parts()
    names = [name for key in parts for name in parts[key]]
    saved = [{name: getattr(layer, name) for name in names} for layer in bm.layers]
    apply_block_configs(model, block_configs(bm.num_layers, removed), parts)
    try:
        yield model
    finally:
        for layer, modules in zip(bm.layers, saved, strict=True):
            for name, module in modules.items():
                setattr(layer, name, module)
