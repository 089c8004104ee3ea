"""What each pruning method is and can do, where every layer can read it without the engine: the
API validates a job's settings by these traits, the worker decides by them whether a job fans
out, the CLI and the model card name and cite the method. The engine's half of a method (how it
picks what to remove) is its module in core/methods/, registered there under the same name.

Adding a method: its module `core/methods/<name>.py` (an object `METHOD`) and its traits here,
under that name: METHOD_TRAITS is the one registry. The job's `method` field (its choices and
help), the API's checks and the engine's lookup (core.methods.METHODS) are all read from it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodTraits:
    summary: str  # what it removes and how, in the job's `method` help
    citation: str  # the model card names the method by it
    layer_units: bool  # removes whole decoder layers, a layer counting as its two blocks
    races: bool  # can run `search: racing` (a greedy search over candidates)
    fans_out: bool  # a job's `parallelism` splits each iteration over workers (service.fanout)
    budget_only: bool = False  # searches a set at a param_ratio budget: num_blocks does not apply


METHOD_TRAITS: dict[str, MethodTraits] = {
    "blockpruner": MethodTraits(
        "greedy removal of attention/MLP blocks by calibration PPL",
        "BlockPruner, arXiv 2406.10594",
        False,
        True,
        True,
    ),
    "shortgpt": MethodTraits(
        "whole layers with the lowest Block Influence, in one shot",
        "ShortGPT's Block Influence, arXiv 2403.03853",
        True,
        False,
        False,
    ),
    "sleb": MethodTraits(
        "greedy removal of whole layers by calibration PPL",
        "SLEB, arXiv 2402.09025",
        True,
        True,
        False,
    ),
    "evo": MethodTraits(
        "the set of attention/MLP blocks with the lowest calibration PPL at a param_ratio budget "
        "(evolutionary search)",
        "evolutionary block search at a parameter budget, after EvoPress (arXiv 2410.14649)",
        False,
        False,
        False,
        budget_only=True,
    ),
}
