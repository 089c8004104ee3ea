"""Racing: one greedy iteration that scores every candidate on a few sequences and finishes only
those that could still win.

Most candidates are clearly worse than the best after a few calibration sequences. Stage k
scores the candidates still in the race on the next slice of sequences (contract.racing's
schedule), then drops each one whose NLL trails the leader's by more than the noise allows:

    d  = mean over the sequences seen of (candidate's NLL - leader's NLL), per sequence
    s  = the standard deviation of those differences
    se = s * sqrt(m / (N * n))     n sequences seen, m = N - n still to come

`se` is the standard error of the full-set mean difference when n of the N sequences are known
(the differences are paired: both models see the same text, so most of the text's own
difficulty cancels). A candidate races on while d <= margin * se: its full-set PPL could still
be below the leader's. The leader always races on, and a margin of infinity keeps everyone: the
exact search. After the last stage every survivor has been scored on all N sequences; the
winner is the lowest full-set PPL (ties to the first in candidate order), exactly as the exact
search decides, so each step's PPL is exact. Only a winner dropped early can change a pick;
`verify` measures how often that happens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from contract import Progress, RemovedBlock, Unit
from contract.iteration import winner
from contract.racing import race_work, stage_chunks, survivors
from contract.state import RaceRecord, RaceStage
from core.activations import ActivationCache, ppl_from_nlls


def race_iteration(
    cache: ActivationCache,
    units: Sequence[Unit],
    stage_ends: Sequence[int],
    margin: float,
    iteration: int,
    total_iterations: int | None = None,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[float, Unit, RaceRecord] | None:
    """Race `units` on the cache's removed set through the stages ending at `stage_ends`
    (sequences, on chunk boundaries). Returns the winner's full-set PPL, the winner and the
    record of the race; None if `should_stop` stopped it."""
    step = len(cache.chunks[0])
    total = sum(len(c) for c in cache.chunks)
    nlls: dict[Unit, list[torch.Tensor]] = {u: [] for u in units}
    racing, stages = list(units), []
    for k, end in enumerate(stage_ends):
        chunks = stage_chunks(stage_ends, k, step)
        for n, unit in enumerate(racing):
            if should_stop is not None and should_stop():
                return None
            nlls[unit].append(cache.sequence_nlls(unit, chunks)[0])
            if on_progress is not None:
                on_progress(
                    Progress(
                        iteration=iteration - 1,
                        total_iterations=total_iterations,
                        scored=n + 1,
                        total_candidates=len(racing),
                        last_block=unit[0],
                        stage=k + 1,
                        stages=len(stage_ends),
                    )
                )
        seen = torch.stack([torch.cat(nlls[u]) for u in racing])
        if end < total:
            racing = [racing[i] for i in survivors(seen.tolist(), total, margin)]
        else:  # every survivor has seen every sequence: the exact rule picks the winner
            ppls = [ppl_from_nlls(row) for row in seen]
            best = winner(ppls)
            racing, winner_ppl = [racing[best]], ppls[best]
        stages.append(
            RaceStage(sequences=end, raced=len(seen), kept=[b for unit in racing for b in unit])
        )
    record = RaceRecord(
        iteration=iteration,
        stages=stages,
        work=race_work([s.raced for s in stages], stage_ends),
        winner=RemovedBlock.of(racing[0][0], winner_ppl),
    )
    return winner_ppl, racing[0], record


def verified(record: RaceRecord, exact: tuple[float, Unit]) -> RaceRecord:
    """The record with the exact search's pick from the same removed blocks."""
    ppl, unit = exact
    return record.model_copy(update={"exact": RemovedBlock.of(unit[0], ppl)})


def search_record(
    search: str,
    stage_ends: Sequence[int] | None = None,
    margin: float | None = None,
    races: Sequence[RaceRecord] = (),
) -> dict:
    """What pruning.json says of the search: its mode and, for racing, its stages (sequences at
    the end of each), margin, each iteration's race and, where verified, the disagreements with
    the exact search (both picks and both PPLs)."""
    if search != "racing":
        return {"mode": search}
    record: dict = {
        "mode": "racing",
        "stage_sequences": list(stage_ends or []),
        "margin": margin,
        "iterations": [r.model_dump(mode="json") for r in races],
        "work": sum(r.work for r in races) / len(races) if races else None,
    }
    verified_races = [r for r in races if r.exact is not None]
    if verified_races:
        record["verified"] = len(verified_races)
        record["disagreements"] = [
            {
                "iteration": r.iteration,
                "racing": r.winner.model_dump(),
                "exact": r.exact.model_dump(),
            }
            for r in verified_races
            if r.exact is not None and not r.agrees
        ]
    return record
