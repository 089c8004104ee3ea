"""The rule of one greedy iteration, in plain numbers: which candidate wins, whether its removal
is taken, and when the search ends. The engine (core/search.py, core/racing.py) and the write
that closes a fanned-out iteration (service/fanout.py) both call these, so a search over many
workers ends exactly where one worker's does, with the same picks.
"""

from __future__ import annotations

from collections.abc import Sequence

from contract.state import SearchState


def beats(ppl: float, best: float | None) -> bool:
    """Whether a candidate scored after the current best replaces it: strictly lower, so ties
    go to the first candidate in the paper's order."""
    return best is None or ppl < best


def winner(ppls: Sequence[float]) -> int:
    """The index of the winning candidate of one iteration, its PPLs in the paper's order."""
    best: int | None = None
    for i, ppl in enumerate(ppls):
        if beats(ppl, None if best is None else ppls[best]):
            best = i
    if best is None:
        raise ValueError("an iteration needs at least one candidate")
    return best


def within_ratio(
    removed_params: int, unit_params: int, total_params: int, param_ratio: float | None
) -> bool:
    """Whether removing the winner too keeps the removed parameters at or under `param_ratio`.
    When it does not, the search ends before it: the last step not above the ratio was the one
    before."""
    return param_ratio is None or (removed_params + unit_params) / total_params <= param_ratio


def target_reached(removed: int, num_blocks: int | None) -> bool:
    """Whether `removed` completed iterations meet a block-count target (a ratio has none)."""
    return num_blocks is not None and removed >= num_blocks


def finish(state: SearchState) -> None:
    """Mark a search done: its final PPL is the last removal's, or the base model's."""
    state.done = True
    state.final_ppl = state.removed[-1].ppl if state.removed else state.base_ppl
