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

# How far behind the leader a candidate may be and race on, in standard errors of its NLL
# difference to the leader over the full set (core.racing). Chosen on WikiText-2 valid
# (bench/racing.py); README reports the agreement on other data.
DEFAULT_RACE_MARGIN = 3.0
# Below 4 sequences the spread of the NLL differences cannot be estimated.
MIN_RACE_SLICE = 4


def default_race_slice(samples: int, batch_size: int | None) -> int:
    """A quarter of the sequences, at least MIN_RACE_SLICE, rounded up to whole chunks."""
    first = max(MIN_RACE_SLICE, samples // 4)
    if batch_size is not None:
        first = -(-first // batch_size) * batch_size
    return first


def race_chunk(samples: int, batch_size: int | None, race_slice: int | None) -> int:
    """Sequences per chunk in a racing search: the batch size, or the first slice without one."""
    if batch_size is not None:
        return batch_size
    return race_slice if race_slice is not None else default_race_slice(samples, None)


def race_problem(
    samples: int, batch_size: int | None, race_slice: int | None
) -> tuple[str, str] | None:
    """(field, message) when these settings give no race; else None."""
    first = race_slice if race_slice is not None else default_race_slice(samples, batch_size)
    if first < MIN_RACE_SLICE:
        return "race_slice", f"must be at least {MIN_RACE_SLICE}, got {first}"
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
    first = race_slice if race_slice is not None else default_race_slice(samples, batch_size)
    ends = []
    while first < samples:
        ends.append(first)
        first *= 2
    return [*ends, samples]
