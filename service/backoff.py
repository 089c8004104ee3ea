"""Backoff for waiting out an outage: exponential, capped, with jitter (so that the workers and
relays that saw the same outage do not all come back at the same instant)."""

from __future__ import annotations

import random


def backoff_s(tries: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """The wait before try `tries + 1` after `tries` failed ones: half of min(cap, base * 2^n)
    fixed, the other half drawn uniformly ("equal jitter": never near 0, never in lockstep)."""
    ceiling = min(cap_s, base_s * 2 ** max(tries - 1, 0))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


def worth_an_event(tries: int) -> bool:
    """A long outage records its retries at tries 1, 2, 4, 8...: what is waited for is visible
    at once, and an hour of waiting adds a dozen events, not thousands."""
    return tries & (tries - 1) == 0
