"""The search's state (the one shape of a checkpoint) and a job's progress.

`SearchState` is what the engine returns, what `blockprune prune` saves next to its output and
what a worker commits to PostgreSQL after every iteration. It carries the spec's result fields
that made it, so a resume with other settings can say which fields differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field, computed_field

from contract.blocks import Block
from contract.errors import ErrorCode, UserError
from contract.spec import JobSpec


class RemovedBlock(Block):
    """A removed block, with the calibration PPL of the model once it was removed."""

    ppl: float = Field(description="calibration PPL after removing this block")

    @classmethod
    def of(cls, block: Block, ppl: float) -> RemovedBlock:
        return cls(kind=block.kind, layer=block.layer, ppl=ppl)

    @property
    def ref(self) -> Block:
        """The block itself, without its PPL (a RemovedBlock never equals a Block)."""
        return Block(kind=self.kind, layer=self.layer)


class RaceStage(BaseModel):
    """One stage of a racing iteration: who raced, on how many sequences, and who went on."""

    sequences: int = Field(description="calibration sequences scored after this stage")
    raced: int = Field(description="candidates scored in this stage")
    kept: list[Block] = Field(
        description="the blocks of the candidates that went on (after the last stage: the winner)"
    )


class RaceRecord(BaseModel):
    """A racing iteration, for pruning.json: its stages and, with verify, the exact pick."""

    iteration: int = Field(description="the iteration (1 = the first block removed)")
    stages: list[RaceStage]
    work: float = Field(description="candidate-sequence passes, as a fraction of the exact's")
    winner: RemovedBlock = Field(description="the pick, with its PPL on every sequence")
    exact: RemovedBlock | None = Field(
        None, description="verify: the exact search's pick from the same removed blocks"
    )

    @property
    def agrees(self) -> bool | None:
        """Whether the exact search picked the same block (None: not verified)."""
        if self.exact is None:
            return None
        return self.winner.ref == self.exact.ref


class EvolutionRecord(BaseModel):
    """An evolutionary search (method evo) where it stands: its checkpoint between generations,
    from which a resume goes on with the same picks as a run that never stopped."""

    start: list[Block] = Field(description="the greedy start's blocks, in removal order")
    best: list[Block] = Field(description="the best set so far, by position")
    fitness: float = Field(description="the best set's mean objective on all calibration tokens")
    generation: int = Field(0, ge=0, description="generations done")
    since_better: int = Field(0, ge=0, description="generations since the best last changed")
    done: bool = Field(False, description="the search has stopped; `best` is the set it chose")
    rng: list[int] = Field(
        default_factory=list, description="the mutations' random generator's state (Python's)"
    )


@dataclass
class SearchState:
    spec: dict[str, Any] | None = None  # JobSpec.result_fields() of the spec that made it
    config_hash: str = ""
    base_ppl: float | None = None
    removed: list[RemovedBlock] = field(default_factory=list)
    total_iterations: int | None = None  # the target when it was last run (None: a ratio)
    done: bool = False
    final_ppl: float | None = None
    races: list[RaceRecord] = field(default_factory=list)  # a racing search's iterations
    evolution: EvolutionRecord | None = None  # an evolutionary search's, before its removals

    @classmethod
    def new(cls, spec: JobSpec) -> SearchState:
        return cls(spec=spec.result_fields(), config_hash=spec.config_hash())

    @property
    def blocks_removed(self) -> int:
        """How many blocks are removed (an iteration removes one, or a whole layer's two)."""
        return len(self.removed)

    @property
    def removed_blocks(self) -> list[Block]:
        """The removed blocks, in the order they went, without their PPLs."""
        return [r.ref for r in self.removed]

    def check_resumable(self, spec: JobSpec) -> None:
        """Refuse, naming the fields, a state made with settings other than `spec`'s."""
        if self.config_hash == spec.config_hash():
            return
        if self.spec is not None:
            detail = "; ".join(spec.differences(self.spec))
        else:  # a state from before specs were saved with it: only the hash is known
            detail = f"config hash {self.config_hash!r} in the state, {spec.config_hash()!r} now"
        raise UserError(
            "resume",
            f"the saved search state was made with different settings ({detail}); "
            "start a new search instead",
            code=ErrorCode.STATE_MISMATCH,
        )

    def to_json(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}  # what only some methods' states have
        if self.races:
            extra["races"] = [r.model_dump(mode="json") for r in self.races]
        if self.evolution is not None:
            extra["evolution"] = self.evolution.model_dump(mode="json")
        return {
            "config_hash": self.config_hash,
            "spec": self.spec,
            "base_ppl": self.base_ppl,
            "removed": [r.model_dump() for r in self.removed],
            "blocks_removed": self.blocks_removed,
            "total_iterations": self.total_iterations,
            "done": self.done,
            "final_ppl": self.final_ppl,
            **extra,
        }

    @classmethod
    def from_json(cls, data: Any) -> SearchState:
        """Read a saved state (also one written before `spec` was saved with it)."""
        if not isinstance(data, dict):
            raise UserError("state", f"expected a JSON object, got {type(data).__name__}")
        try:
            state = cls(
                spec=data.get("spec"),
                config_hash=str(data.get("config_hash", "")),
                base_ppl=_number(data.get("base_ppl")),
                removed=[RemovedBlock.model_validate(r) for r in data.get("removed", [])],
                total_iterations=data.get("total_iterations"),
                done=bool(data.get("done", False)),
                final_ppl=_number(data.get("final_ppl")),
                races=[RaceRecord.model_validate(r) for r in data.get("races", [])],
                evolution=(
                    EvolutionRecord.model_validate(data["evolution"])
                    if data.get("evolution") is not None
                    else None
                ),
            )
        except (TypeError, ValueError) as e:
            raise UserError("state", f"not a search state: {e}") from None
        count = data.get("blocks_removed", data.get("iteration"))  # "iteration": older states
        if count is not None and count != state.blocks_removed:
            raise UserError("state", "blocks_removed does not match the removed blocks")
        return state


def _number(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    return float(value)


class Progress(BaseModel):
    """Where a search is: the engine reports it per candidate, the API shows it."""

    # The API's names: `iteration` counts removed blocks (a whole-layer method's step removes
    # two), and `total_iterations` is the num_blocks target, so the fraction is by blocks.
    iteration: int = Field(0, description="blocks removed so far (one per exact iteration)")
    total_iterations: int | None = Field(
        None, description="blocks to remove (num_blocks); None for a param_ratio target"
    )
    scored: int = Field(0, description="candidates scored in the running iteration")
    total_candidates: int = Field(0, description="candidates of the running iteration")
    best_ppl: float | None = Field(None, description="lowest PPL of the running iteration so far")
    best_block: Block | None = Field(None, description="the block that gave best_ppl")
    last_block: Block | None = Field(None, description="the candidate scored last")
    stage: int | None = Field(
        None, description="racing: the running stage (1-based); scored counts within it"
    )
    stages: int | None = Field(None, description="racing: stages per iteration")
    generation: int | None = Field(
        None, description="evo: generations done (before its first removal)"
    )
    generations: int | None = Field(None, description="evo: the most generations it runs")
    best_fitness: float | None = Field(
        None, description="evo: the best set's mean objective (KL from the dense model, or NLL)"
    )

    @computed_field(description="share of the job's candidates done; None for a ratio target")
    def fraction(self) -> float | None:
        if not self.total_iterations:
            return None
        within = self.scored / self.total_candidates if self.total_candidates else 0.0
        if self.stage is not None and self.stages:
            within = (self.stage - 1 + within) / self.stages
        return min(1.0, (self.iteration + within) / self.total_iterations)
