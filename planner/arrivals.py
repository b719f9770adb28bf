"""Arrival processes, drawn once at rate 1/s and rescaled to any rate.

Drawing the gaps once and dividing by the rate gives every simulated rate the same random
pattern (common random numbers), so attainment changes with the rate only because the load
changes; that keeps the goodput bisection steady.
"""

from __future__ import annotations

import numpy as np

from planner.errors import PlannerError


def unit_gaps(n: int, process: str, cv: float, seed: int) -> list[float]:
    """`n` inter-arrival gaps with mean 1 s; the first request arrives at 0.

    `poisson`: exponential gaps. `gamma`: Gamma gaps with coefficient of variation `cv`
    (cv > 1 is burstier than Poisson, cv < 1 smoother; cv = 1 is Poisson).
    """
    rng = np.random.default_rng(seed + 7919)  # decorrelated from the length draws
    if process == "poisson":
        gaps = rng.exponential(1.0, n - 1)
    elif process == "gamma":
        if cv <= 0:
            raise PlannerError("--burstiness (the Gamma arrival CV) must be positive")
        shape = 1.0 / (cv * cv)
        gaps = rng.gamma(shape, 1.0 / shape, n - 1)
    else:
        raise PlannerError(f"unknown arrival process {process!r}; use poisson or gamma")
    return [0.0, *gaps.tolist()]


def arrival_times(gaps: list[float], rate: float) -> list[float]:
    """Absolute arrival times (s) for unit-rate `gaps` at `rate` requests/s."""
    times = np.cumsum(np.asarray(gaps) / rate)
    return times.tolist()
