"""Pruning methods behind one small interface, so that baselines run through the same pipeline,
checkpoints, export and evaluation as BlockPruner.

A method is an object with `traits` (what it can do: contract.methods, shared with the API) and
`units`: what one step of the engine's loop (core/search.py's `run_search`) may remove, in
tie-break order, and whether they are a fixed ranking removed in that order or candidates the
greedy search scores. The loop, its checkpoints and its exact or racing iterations are the
engine's; layer methods remove a layer as its two blocks (both entries carry the PPL after the
layer), so the export, the model card and `pruning.json` need nothing method-specific.

To add a method: a module here named as the method, with its object `METHOD` (`sleb.py` is a
greedy search over other units, `shortgpt.py` a one-shot ranking, `evo.py` a search of its own at
a budget), and its line in contract.methods.METHOD_TRAITS, the one registry: METHODS below
imports each module it names.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from contract import SearchState
from contract.methods import METHOD_TRAITS
from core.blocks import BlockModel
from core.methods.base import Callbacks, PruningMethod, Units
from core.search import SearchConfig, run_search

METHODS: dict[str, PruningMethod] = {
    name: importlib.import_module(f"core.methods.{name}").METHOD for name in METHOD_TRAITS
}
__all__ = ["METHODS", "Callbacks", "PruningMethod", "Units", "run_method"]


def run_method(
    bm: BlockModel,
    input_ids: torch.Tensor,
    config: SearchConfig,
    state: SearchState | None = None,
    **callbacks: Any,
) -> SearchState:
    """Run `config.method` (a new search if `state` is None, else resumed from it);
    `callbacks`: on_iteration, on_progress, should_stop, as `run_search` names them."""
    chosen = METHODS[config.method].units(bm, input_ids, config, state, Callbacks(**callbacks))
    if chosen.state is not None:
        state = chosen.state
    if chosen.stopped:
        assert state is not None, "a method stopped before the loop returns where it stands"
        return state
    return run_search(
        bm,
        input_ids,
        config,
        state,
        units=chosen.units,
        ranked=chosen.ranked,
        **callbacks,
    )
