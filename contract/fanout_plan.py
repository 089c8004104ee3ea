"""The plan of a search fanned out over workers: what the worker that takes the job measures
once (every candidate block, in the paper's order, with its size) and what every write that
closes a stage or an iteration (service/fanout.py) reads back from the job row.

It is stored as JSON on the job; plans stored before this type existed (candidates as
`[block, layer]` pairs) read the same, through `Block`.
"""

from __future__ import annotations

from functools import cached_property

from pydantic import BaseModel, ConfigDict, Field

from contract.blocks import Block
from contract.state import SearchState


class FanoutPlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    candidates: list[Block] = Field(description="every candidate block, in the paper's order")
    block_params: list[int] = Field(description="each candidate's parameters, in that order")
    total_params: int = Field(gt=0, description="the base model's parameters")
    num_layers: int = Field(gt=0)
    stages: list[int] | None = Field(
        None, description="racing: the sequences seen at the end of each stage (None: exact)"
    )
    margin: float | None = Field(None, description="racing: the survivors' margin")

    @property
    def racing(self) -> bool:
        return self.stages is not None

    @property
    def stage_count(self) -> int:
        """Stages per iteration: 1 for an exact search."""
        return len(self.stages) if self.stages is not None else 1

    @cached_property
    def _index(self) -> dict[Block, int]:
        return {b: i for i, b in enumerate(self.candidates)}

    def index(self, block: Block) -> int:
        """The candidate's place in the paper's order (the tie-break order)."""
        return self._index[block]

    def params(self, block: Block) -> int:
        return self.block_params[self.index(block)]

    def remaining(self, state: SearchState) -> list[int]:
        """Indexes of the candidates not removed yet, in the paper's order."""
        removed = set(state.removed_blocks)
        return [i for i, b in enumerate(self.candidates) if b not in removed]

    def removed_params(self, state: SearchState) -> int:
        return sum(self.params(b) for b in state.removed_blocks)
