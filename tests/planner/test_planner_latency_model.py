"""Timing a step that mixes prefill chunks and decodes (the colocated engine)."""

from __future__ import annotations

import pytest

from planner.fitted_profile import Coefficients, FittedTiming
from planner.latency_model import mixed_ms

TIMING = FittedTiming(Coefficients((20, 0.1, 1e-5), (10, 0.001, 0.05), (10, 0.001, 0.05), 95), 1)


def test_pure_steps_are_the_phase_times():
    assert mixed_ms(TIMING, 0, 0, 8, 8000) == TIMING.decode_ms(8, 8000)
    assert mixed_ms(TIMING, 500, 500**2, 0, 0) == TIMING.prefill_ms(500, 500**2)


def test_decodes_ride_along_a_prefill_step_and_pay_their_attention():
    mixed = mixed_ms(TIMING, 500, 500**2, 8, 8000)
    assert mixed == pytest.approx(TIMING.prefill_ms(508, 500**2) + 0.001 * 8000)
    # Cheaper than running the two steps one after the other...
    assert mixed < TIMING.prefill_ms(500, 500**2) + TIMING.decode_ms(8, 8000)
    # ...but every decode in it waits for the whole prefill chunk.
    assert mixed > 4 * TIMING.decode_ms(8, 8000)
