"""What each pruning method is and can do, where every layer can read it without the engine: the
API validates a job's settings by these traits, the worker decides by them whether a job fans
out, the CLI and the model card name and cite the method. The engine's half of a method (how it
picks what to remove) is its module in core/methods/, registered there under the same name.

Adding a method: its traits here (one line in METHOD_TRAITS), its module in core/methods/ (one
line in its registry)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodTraits:
    citation: str  # the model card names the method by it
    layer_units: bool  # removes whole decoder layers, a layer counting as its two blocks
    races: bool  # can run `search: racing` (a greedy search over candidates)
    fans_out: bool  # a job's `parallelism` splits each iteration over workers (service.fanout)
    budget_only: bool = False  # searches a set at a param_ratio budget: num_blocks does not apply


METHOD_TRAITS: dict[str, MethodTraits] = {
    "blockpruner": MethodTraits("BlockPruner, arXiv 2406.10594", False, True, True),
    "shortgpt": MethodTraits("ShortGPT's Block Influence, arXiv 2403.03853", True, False, False),
    "sleb": MethodTraits("SLEB, arXiv 2402.09025", True, True, False),
    "evo": MethodTraits(
        "evolutionary block search at a parameter budget, after EvoPress (arXiv 2410.14649)",
        False,
        False,
        False,
        budget_only=True,
    ),
}
