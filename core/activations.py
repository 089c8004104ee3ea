"""The activation cache of one iteration: the inputs of the current pruned model's block
positions on the calibration batch, kept within a memory budget.

The layout (contract.memory.cache_layout) keeps every position when memory allows, else every
k-th one, first on the model's device and then, for a model on a GPU, in pinned CPU memory.
`score` restarts a candidate from the nearest kept position at or before it, recomputes the
blocks up to it, skips it and runs the rest. Every block sees exactly the tensors of a full pass
(same chunks, same ops), so any budget gives bit-identical PPLs; only the work changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from contract import Block, Unit, UserError
from contract.memory import CacheLayout, cache_layout
from core.blocks import BlockModel

# The activations after a candidate, per kept position: to adopt if the candidate wins.
After = dict[int, list[torch.Tensor]]


def ppl_from_nlls(nlls: torch.Tensor) -> float:
    """The paper's PPL: exp of the mean over sequences of each sequence's mean token NLL."""
    return math.exp(nlls.double().mean().item())


class ActivationCache:
    """`acts[p][c]` is the input of kept position p for sequence chunk c."""

    def __init__(
        self,
        bm: BlockModel,
        input_ids: torch.Tensor,
        batch_size: int | None,
        budget: int | None = None,
        host_budget: int = 0,
    ) -> None:
        self.bm = bm
        step = batch_size or len(input_ids)
        self.chunks = [input_ids[s : s + step] for s in range(0, len(input_ids), step)]
        self.budget = budget
        self.host_budget = host_budget  # the CLI and worker give one only for a GPU model
        position_bytes = input_ids.numel() * bm.config.hidden_size * bm.dtype.itemsize
        self.layout: CacheLayout = cache_layout(
            bm.num_positions, position_bytes, budget, self.host_budget
        )
        self.acts: dict[int, list[torch.Tensor]] = {}
        self.skip: set[int] = set()
        self.work = 0  # block evaluations, for benchmarks

    # ---- storing and fetching -----------------------------------------------------------------
    def _store(self, position: int, h: torch.Tensor) -> torch.Tensor:
        if position in self.layout.on_device:
            return h
        host = torch.empty(h.shape, dtype=h.dtype, pin_memory=h.device.type == "cuda")
        return host.copy_(h)

    def _start(self, position: int, c: int) -> tuple[int, torch.Tensor]:
        """The input of the kept position a candidate at `position` restarts from, on device."""
        start = self.layout.start(position)
        if start == 0:
            return 0, self.bm.embed(self.chunks[c])
        return start, self.acts[start][c].to(self.bm.device_at(start), non_blocking=True)

    def _run(
        self, h: torch.Tensor, start: int, stop: int, skip: set[int], record: After | None
    ) -> torch.Tensor:
        """Positions start..stop-1 on `h`, recording the inputs of kept positions in `record`."""
        for pos in range(start, stop):
            if pos not in skip:
                h = self.bm.run_block(pos, h)
                self.work += 1
            if record is not None and pos + 1 in record:
                record[pos + 1].append(self._store(pos + 1, h))
        return h

    # ---- the iteration's operations -----------------------------------------------------------
    @torch.inference_mode()
    def build(self, removed: Sequence[Block]) -> float:
        """Full pass of the model with `removed` taken out; returns its PPL."""
        self.skip = {self.bm.position(b) for b in removed}
        self.acts = {p: [] for p in self.layout.kept}
        nlls = []
        for ids in self.chunks:
            h = self._run(self.bm.embed(ids), 0, self.bm.num_positions, self.skip, self.acts)
            nlls.append(self.bm.sequence_nll(h, ids))
        return ppl_from_nlls(torch.cat(nlls))

    def _positions(self, unit: Unit) -> set[int]:
        return {self.bm.position(b) for b in unit}

    def after_bytes(self, unit: Unit) -> tuple[int, int]:
        """(device, host) bytes of the activations `score(unit, keep=True)` returns."""
        pos = min(self._positions(unit))
        later = [p for p in self.layout.kept if p > pos]
        device = sum(p in self.layout.on_device for p in later) * self.layout.position_bytes
        return device, len(later) * self.layout.position_bytes - device

    def can_hold(self, unit: Unit, also: tuple[int, int] = (0, 0)) -> bool:
        """Whether the activations after `unit` fit beside the cache and `also` (held)."""
        if self.budget is None:
            return True
        device, host = self.layout.bytes()
        more = self.after_bytes(unit)
        return (
            device + also[0] + more[0] <= self.budget
            and host + also[1] + more[1] <= self.host_budget
        )

    def score(self, unit: Unit, keep: bool = True) -> tuple[float, After | None]:
        """PPL with every block of `unit` also removed; with `keep`, the activations after it
        too."""
        nlls, after = self.sequence_nlls(unit, keep=keep)
        return ppl_from_nlls(nlls), after

    @torch.inference_mode()
    def sequence_nlls(
        self, unit: Unit, chunks: range | None = None, keep: bool = False
    ) -> tuple[torch.Tensor, After | None]:
        """Each sequence's mean NLL with `unit` also removed, over the sequence chunks
        `chunks` (default: all). Chunk by chunk, the same tensors as `score`'s, so the NLLs of
        several ranges, concatenated in order, are bit-identical to one call over all of them
        (racing scores a first slice, then the rest). `keep` needs every chunk."""
        if keep and chunks not in (None, range(len(self.chunks))):
            raise ValueError("keeping the activations after a candidate needs every chunk")
        pos = min(self._positions(unit))
        after: After | None = {p: [] for p in self.layout.kept if p > pos} if keep else None
        nlls = self.sequence_scores(
            unit, lambda h, c: self.bm.sequence_nll(h, self.chunks[c]), chunks, after
        )
        return nlls, after

    @torch.inference_mode()
    def sequence_scores(
        self,
        unit: Unit,
        score: Callable[[torch.Tensor, int], torch.Tensor],
        chunks: range | None = None,
        after: After | None = None,
    ) -> torch.Tensor:
        """`score(final hidden state, chunk index)` of each sequence chunk with `unit` also
        removed (a sequence's NLL, or its divergence from another model: core/methods/evo.py),
        concatenated; `after` records the kept positions' inputs."""
        positions = self._positions(unit)
        if positions & self.skip:
            names = ", ".join(str(b) for b in unit)
            raise UserError("candidates", f"block {names} is already removed")
        pos, skip = min(positions), self.skip | positions
        out = []
        for c in range(len(self.chunks)) if chunks is None else chunks:
            start, h = self._start(pos, c)
            out.append(score(self._run(h, start, self.bm.num_positions, skip, after), c))
        return torch.cat(out)

    @torch.inference_mode()
    def rerun(self, unit: Unit) -> After:
        """The activations after `unit` again (its scoring pass did not keep them), up to the
        last kept position only: the logits are not needed."""
        positions = self._positions(unit)
        pos = min(positions)
        after: After = {p: [] for p in self.layout.kept if p > pos}
        if not after:
            return after
        stop = max(after)
        for c in range(len(self.chunks)):
            start, h = self._start(pos, c)
            self._run(h, start, stop, self.skip | positions, after)
        return after

    def adopt(self, unit: Unit, after: After) -> None:
        """Make the cache that of the model with `unit` also removed, from its pass."""
        self.acts.update(after)
        self.skip |= self._positions(unit)
