"""Pruning methods behind one small interface, so that baselines run through the same pipeline,
checkpoints, export and evaluation as BlockPruner.

A method is a module with a `run` function of the `PruningMethod` shape: the model as blocks, the
calibration tokens, the search settings and a saved state to resume from; it returns the state
with the removed blocks in order, each with the calibration PPL after it. Layer methods remove a
layer as its two blocks (both entries carry the PPL after the layer), so the export, the model
card and `pruning.json` need nothing method-specific.

To add a method: copy `sleb.py` (a greedy search over some units) or `shortgpt.py` (a one-shot
ranking), give it a name in `contract.spec.Method`, and register it below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from contract import Progress, SearchState
from core.blocks import BlockModel
from core.methods import blockpruner, shortgpt, sleb
from core.search import SearchConfig


class PruningMethod(Protocol):
    def __call__(
        self,
        bm: BlockModel,
        input_ids: torch.Tensor,
        config: SearchConfig,
        state: SearchState | None = None,
        *,
        on_iteration: Callable[[SearchState], None] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> SearchState: ...


METHODS: dict[str, PruningMethod] = {
    "blockpruner": blockpruner.run,
    "shortgpt": shortgpt.run,
    "sleb": sleb.run,
}


def run_method(
    bm: BlockModel,
    input_ids: torch.Tensor,
    config: SearchConfig,
    state: SearchState | None = None,
    **callbacks: Any,
) -> SearchState:
    """Run `config.method` (a new search if `state` is None, else resumed from it);
    `callbacks`: on_iteration, on_progress, should_stop, as `PruningMethod` names them."""
    return METHODS[config.method](bm, input_ids, config, state, **callbacks)
