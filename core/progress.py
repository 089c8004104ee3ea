"""The search's progress bar, shared by `blockprune prune` (fed each candidate as it is scored)
and `blockprune jobs wait` (fed the job's polled snapshots), so both show the same bar.

It counts candidates, not iterations: an iteration scores every block still in the model, so
the candidates of all iterations make the ETA the job's, not the running iteration's.
"""

from __future__ import annotations

from collections.abc import Sequence

from contract import Phase, Progress, RemovedBlock


class SearchBar:
    def __init__(self) -> None:
        from tqdm import tqdm  # here, not at import: parsing the CLI stays light

        # disable=None: no bar when stderr is not a terminal (logs, CI), only the lines.
        self.bar = tqdm(total=0, unit="cand", dynamic_ncols=True, disable=None)
        self.written = 0  # removed blocks already reported

    # ---- the local engine's callbacks (core.pipeline.run_prune) -----------------------------
    def phase(self, phase: Phase | str) -> None:
        self.bar.set_description(phase.value if isinstance(phase, Phase) else phase)

    def scored(self, p: Progress) -> None:
        """One more candidate was scored (for evo: one more generation)."""
        if p.generation is not None:
            self._evolution(p)
            return
        if p.stage is not None:  # racing: how many race on is known only stage by stage
            self._racing(p)
            return
        if p.total_iterations is None:  # ratio target: grow as we go
            if p.scored == 1:
                self.bar.total = (self.bar.total or 0) + p.total_candidates
        elif not self.bar.total:  # all candidates of all remaining iterations
            left = p.total_iterations - p.iteration
            self.bar.total = sum(p.total_candidates - k for k in range(left))
        self._describe(p)
        self.bar.update(1)

    def removed(self, block: RemovedBlock) -> None:
        self.written += 1
        self.bar.write(f"removed {block}: ppl {block.ppl:.3f}")

    def write(self, text: str) -> None:
        self.bar.write(text)

    def step(self, text: str) -> None:
        self.bar.write(f"  {text}")

    def close(self) -> None:
        self.bar.close()

    # ---- a remote job's snapshots ------------------------------------------------------------
    def snapshot(
        self, stage: Phase | str | None, p: Progress, removed: Sequence[RemovedBlock]
    ) -> None:
        """Show a polled job: `stage` its phase (or its status while it has none). A poll may
        skip candidates, so the count is set from the job's position rather than stepped."""
        for block in removed[self.written :]:
            self.removed(block)
        if p.generation is not None and stage in (Phase.SEARCHING, Phase.SEARCHING.value):
            self._evolution(p)
            return
        searching = stage in (Phase.SEARCHING, Phase.SEARCHING.value) and p.total_candidates
        if searching and p.stage is not None:
            self._racing(p)
            return
        if not searching:
            if self.bar.total and p.fraction == 1.0:  # polled past the search's last candidate
                self.bar.n = self.bar.total
            if stage is not None:
                self.phase(stage)
            return
        # Each iteration removes one candidate, so iteration k scored `first - k` of them.
        first = p.total_candidates + p.iteration
        iterations = p.total_iterations or p.iteration + 1  # a ratio target: what is known
        self.bar.total = sum(first - k for k in range(iterations))
        self.bar.n = sum(first - k for k in range(p.iteration)) + p.scored
        self._describe(p)
        self.bar.refresh()

    def _racing(self, p: Progress) -> None:
        """A racing search's bar: the job's fraction in percent (candidates within the stage
        for a ratio target, whose length is unknown)."""
        fraction: float | None = p.fraction  # type: ignore[assignment]  # a computed field
        if fraction is not None:
            self.bar.total, self.bar.unit = 100, "%"
            self.bar.n = round(100 * fraction, 1)
        else:
            self.bar.total, self.bar.n = p.total_candidates, p.scored
        self._describe(p)
        self.bar.refresh()

    def _evolution(self, p: Progress) -> None:
        """Evo's bar: generations of at most `generations` (it may stop sooner, on patience)."""
        self.bar.total, self.bar.unit, self.bar.n = p.generations, "gen", p.generation
        self.bar.set_description("evo generation")
        if p.best_fitness is not None:
            self.bar.set_postfix_str(f"best objective {p.best_fitness:.4f}")
        self.bar.refresh()

    def _describe(self, p: Progress) -> None:
        stage = f", stage {p.stage}/{p.stages}" if p.stage is not None else ""
        self.bar.set_description(f"iteration {p.iteration + 1}/{p.total_iterations or '?'}{stage}")
        if p.best_block is not None:
            best = str(p.best_block)
            self.bar.set_postfix_str(f"best ppl {p.best_ppl:.3f} ({best})")
