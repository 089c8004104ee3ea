"""The shape of a pruning method (core/methods/): its traits, shared with the API through
contract.methods, and what one step of the engine's loop may remove."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from contract import SearchState, Unit
from contract.methods import MethodTraits
from core.blocks import BlockModel
from core.search import SearchConfig


@dataclass(frozen=True)
class Units:
    """What a method removes: `units` in tie-break order; `ranked`: removed in that order, each
    step scoring only the next one (a one-shot ranking), instead of the best of all."""

    units: Sequence[Unit]
    ranked: bool = False


class PruningMethod(Protocol):
    traits: MethodTraits

    def units(
        self,
        bm: BlockModel,
        input_ids: torch.Tensor,
        config: SearchConfig,
        state: SearchState | None,
    ) -> Units:
        """The units for a search on `bm` from `state` (None: a new search)."""
        ...
