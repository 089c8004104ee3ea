"""The racing search's schedule: which calibration sequences each stage of an iteration scores.

An exact iteration scores every candidate on every calibration sequence. A racing iteration
scores every candidate on a first slice of the sequences, keeps the candidates that could still
win (core.racing decides), scores those on the next slice, and so on until the survivors have
seen every sequence; the winner is picked on the full set, so its PPL is the exact one.

Stages end at the first slice, then twice that, four times, ... and at the last sequence. The
sequences are scored in chunks (the search's batches); a stage ends on a chunk boundary so that
every chunk is computed exactly as the exact search computes it, and the PPLs of the survivors
are bit-identical to the exact search's with the same chunks. The engine and the service (which
runs each stage as shares over its workers) both take the schedule from here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# How far behind the leader a candidate may be and race on, in standard errors of its NLL
# difference to the leader over the full set (`survivors`). Chosen on WikiText-2 valid
# (bench/racing.py); docs/racing.md reports the agreement on other texts and on shuffled
# sequence orders (bench/racing_screen.py).
DEFAULT_RACE_MARGIN = 3.0
# Below 4 sequences the spread of the NLL differences cannot be estimated.
MIN_RACE_SLICE = 4


def default_race_slice(samples: int, batch_size: int | None) -> int:
    """A quarter of the sequences, at least MIN_RACE_SLICE, rounded up to whole chunks."""
    first = max(MIN_RACE_SLICE, samples // 4)
    if batch_size is not None:
        first = -(-first // batch_size) * batch_size
    return first


def first_slice(samples: int, batch_size: int | None, race_slice: int | None) -> int:
    """Sequences in the first stage: `race_slice`, or the default."""
    return race_slice if race_slice is not None else default_race_slice(samples, batch_size)


def race_chunk(samples: int, batch_size: int | None, race_slice: int | None) -> int:
    """Sequences per chunk in a racing search: the batch size, or the first slice without one."""
    return batch_size if batch_size is not None else first_slice(samples, None, race_slice)


def race_problem(
    samples: int, batch_size: int | None, race_slice: int | None
) -> tuple[str, str] | None:
    """(field, message) when these settings give no race; else None."""
    first = first_slice(samples, batch_size, race_slice)
    if first < MIN_RACE_SLICE:
        return "race_slice", f"must be at least {MIN_RACE_SLICE}, got {first}"
    if first >= samples and race_slice is None and batch_size is not None:
        return (
            "batch_size",
            f"racing's stages end on whole batches: batches of {batch_size} leave no first "
            f"slice below samples ({samples}); give a smaller batch_size",
        )
    if first >= samples:
        return (
            "race_slice" if race_slice is not None else "samples",
            f"racing needs more sequences than its first slice ({first}): give samples above "
            f"{first} or search exact (samples is {samples})",
        )
    if batch_size is not None and first % batch_size:
        return (
            "race_slice",
            f"must be a multiple of batch_size ({batch_size}) so that stages end on whole "
            f"batches, got {first}",
        )
    return None


def race_stages(samples: int, batch_size: int | None, race_slice: int | None) -> list[int]:
    """Where each stage ends, in sequences: [first, 2*first, 4*first, ..., samples]."""
    problem = race_problem(samples, batch_size, race_slice)
    if problem is not None:
        from contract.errors import UserError

        raise UserError(*problem)
    first = first_slice(samples, batch_size, race_slice)
    ends = []
    while first < samples:
        ends.append(first)
        first *= 2
    return [*ends, samples]


def stage_chunks(stage_ends: Sequence[int], stage: int, step: int) -> range:
    """The chunks of `step` sequences that stage `stage` (0-based) scores: its slice."""
    begin = stage_ends[stage - 1] if stage else 0
    return range(begin // step, -(-stage_ends[stage] // step))


def survivors(nlls: Sequence[Sequence[float]], total: int, margin: float) -> list[int]:
    """Which candidates race on: `nlls[i]` holds candidate i's mean NLL on each sequence seen
    so far (the same sequences for all), out of `total`. The leader (lowest mean; the first of
    equal ones) always does; another does while its mean paired difference to the leader, d,
    is at most `margin` standard errors of the full-set mean difference:

        se = s * sqrt(m / (total * n))    n sequences seen, m = total - n to come
        s  = max(the candidate's own spread of differences, the pooled spread)

    The pooled spread is the root mean square of the spreads of every candidate racing (the
    leader aside). A first slice of 4 sequences estimates one candidate's spread from 3 degrees
    of freedom, and on heavy-tailed text (a few sequences that hurt a block far more than the
    rest) those 4 can hide most of it: the exact winner then trails by more than a few of its
    own standard errors and is dropped. Pooled over the race, the spread is estimated from
    every candidate's differences, and a candidate's own wider spread still counts
    (bench/racing_screen.py measures both rules on shuffled sequence orders).

    Plain floats, so the engine (core.racing) and the service's closing write decide alike."""
    n = len(nlls[0]) if nlls else 0
    means = [math.fsum(row) / n for row in nlls] if n else [0.0] * len(nlls)
    leader = min(range(len(nlls)), key=lambda i: (means[i], i)) if nlls else 0
    if math.isinf(margin) or n < 2:
        return list(range(len(nlls)))
    scale = math.sqrt((total - n) / (total * n))
    paired = [paired_difference(row, nlls[leader]) for row in nlls]
    others = [s for i, (_, s) in enumerate(paired) if i != leader]
    pooled = math.sqrt(math.fsum(s * s for s in others) / len(others)) if others else 0.0
    return [
        i for i, (d, s) in enumerate(paired) if i == leader or d <= margin * max(s, pooled) * scale
    ]


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """The mean of a - b over paired values (the same sequences), and the differences' sample
    standard deviation (0 from fewer than 2): racing's cut and evo's accept margin both judge a
    difference by them."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    d = math.fsum(diffs) / n
    spread = math.sqrt(math.fsum((x - d) ** 2 for x in diffs) / (n - 1)) if n > 1 else 0.0
    return d, spread


def race_work(raced: Sequence[int], stage_ends: Sequence[int]) -> float:
    """A racing iteration's candidate-sequence passes as a fraction of an exact iteration's:
    `raced[k]` candidates scored the sequences of stage k, which ends at `stage_ends[k]`."""
    passes = sum(
        count * (end - (stage_ends[k - 1] if k else 0))
        for k, (count, end) in enumerate(zip(raced, stage_ends, strict=True))
    )
    return passes / (raced[0] * stage_ends[-1])
