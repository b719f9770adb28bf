"""Arrival processes drawn at rate 1 and rescaled."""

from __future__ import annotations

import statistics

import pytest

from planner.arrivals import arrival_times, unit_gaps
from planner.errors import PlannerError


def test_poisson_gaps_have_mean_and_cv_one():
    gaps = unit_gaps(20001, "poisson", 1.0, 3)[1:]
    assert statistics.mean(gaps) == pytest.approx(1.0, rel=0.03)
    assert statistics.pstdev(gaps) == pytest.approx(1.0, rel=0.05)


def test_gamma_gaps_have_the_asked_burstiness():
    gaps = unit_gaps(20001, "gamma", 3.0, 3)[1:]
    assert statistics.mean(gaps) == pytest.approx(1.0, rel=0.08)
    assert statistics.pstdev(gaps) == pytest.approx(3.0, rel=0.15)


def test_rates_rescale_the_same_pattern():
    gaps = unit_gaps(100, "poisson", 1.0, 0)
    slow, fast = arrival_times(gaps, 1.0), arrival_times(gaps, 4.0)
    assert slow[0] == 0.0 and fast[-1] == pytest.approx(slow[-1] / 4)


def test_unknown_process_is_refused():
    with pytest.raises(PlannerError, match="unknown arrival process"):
        unit_gaps(10, "uniform", 1.0, 0)
