"""The shape of a pruning method (core/methods/): its traits, shared with the API through
contract.methods, and what one step of the engine's loop may remove."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from contract import SearchState, Unit
from contract.methods import MethodTraits
from core.blocks import BlockModel
from core.search import ProgressCallback, SearchConfig, StateCallback


@dataclass(frozen=True)
class Callbacks:
    """The engine loop's callbacks (`run_search`'s), for a method whose own search before the
    loop is long (evo): it reports progress, checkpoints and stops with them too."""

    on_iteration: StateCallback | None = None
    on_progress: ProgressCallback | None = None
    should_stop: Callable[[], bool] | None = None


@dataclass(frozen=True)
class Units:
    """What a method removes: `units` in tie-break order; `ranked`: removed in that order, each
    step scoring only the next one (a one-shot ranking), instead of the best of all.

    A method that searched before the loop returns `state`, the state its search left (the loop
    goes on from it, so its record stays in every checkpoint), and `stopped` when `should_stop`
    stopped that search: then the loop does not run."""

    units: Sequence[Unit]
    ranked: bool = False
    state: SearchState | None = None
    stopped: bool = False


class PruningMethod(Protocol):
    traits: MethodTraits

    def units(
        self,
        bm: BlockModel,
        input_ids: torch.Tensor,
        config: SearchConfig,
        state: SearchState | None,
        callbacks: Callbacks,
    ) -> Units:
        """The units for a search on `bm` from `state` (None: a new search)."""
        ...
