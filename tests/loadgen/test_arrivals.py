"""Arrival processes: rates, burstiness, reproducibility, rescaled traces."""

import math

import numpy as np
import pytest

from loadgen.arrivals import ArrivalError, Arrivals, rescaled


def test_constant_arrivals_are_evenly_spaced() -> None:
    assert Arrivals(4, "constant").times(5, seed=0) == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_infinite_rate_sends_everything_at_once() -> None:
    assert Arrivals(math.inf).times(3, seed=0) == [0.0, 0.0, 0.0]


def test_poisson_has_the_rate_and_exponential_gaps() -> None:
    times = Arrivals(8.0).times(20001, seed=1)
    gaps = np.diff(times)
    assert times[0] == 0.0 and all(gaps >= 0)
    assert 1 / gaps.mean() == pytest.approx(8.0, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.03)


@pytest.mark.parametrize("cv", [0.5, 2.0, 4.0])
def test_gamma_has_the_rate_and_coefficient_of_variation(cv: float) -> None:
    arrivals = Arrivals(5.0, "gamma", cv)
    gaps = np.diff(arrivals.times(40001, seed=2))
    assert 1 / gaps.mean() == pytest.approx(5.0, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.06)
    assert arrivals.burstiness == pytest.approx(1 / cv**2)


def test_same_seed_same_times() -> None:
    assert Arrivals(3.0).times(50, 9) == Arrivals(3.0).times(50, 9)
    assert Arrivals(3.0).times(50, 9) != Arrivals(3.0).times(50, 10)
    # The shape is kept across rates: a goodput search compares like with like.
    slow, fast = Arrivals(1.0).times(50, 9), Arrivals(2.0).times(50, 9)
    assert fast == pytest.approx([t / 2 for t in slow])


@pytest.mark.parametrize(
    ("rate", "kind", "cv"), [(0, "poisson", 1), (-1, "poisson", 1), (math.nan, "poisson", 1),
                             (1, "uniform", 1), (1, "gamma", 0), (1, "gamma", -2)]
)
def test_impossible_arrivals_are_refused(rate: float, kind: str, cv: float) -> None:
    with pytest.raises(ArrivalError):
        Arrivals(rate, kind, cv)


def test_rescaled_trace_keeps_bursts_and_reaches_the_rate() -> None:
    times = [3.0, 3.1, 3.2, 7.0, 11.0]
    out = rescaled(times, 2.0)
    assert out[0] == 0.0
    assert (len(out) - 1) / out[-1] == pytest.approx(2.0)
    assert np.diff(out) / np.diff(out).sum() == pytest.approx(np.diff(times) / 8.0)
    assert rescaled([5.0, 5.0], 4.0) == [0.0, 0.25]
    assert rescaled(times, math.inf) == [0.0] * 5
    with pytest.raises(ArrivalError):
        rescaled(times, 0)
