"""Per-instance goodput by bisection."""

from __future__ import annotations

from planner.goodput import (
    PhaseTask,
    Slo,
    find_goodput,
    instance_spec,
    simulate_task,
    task_attainment,
)
from planner.memory import EngineLimits

LIMITS = EngineLimits()


def _goodput(distserve_13b, opt13b, task, slo, sample):
    timing = distserve_13b.timing(task.tp, task.pp)
    return find_goodput(task, timing, sample, slo, LIMITS, opt13b.kv_bytes_per_token)


def test_goodput_is_where_attainment_crosses_the_target(distserve_13b, opt13b, make_sample):
    sample = make_sample(200)
    task = PhaseTask("prefill", 1, 1, 66144)
    slo = Slo(0.25, 0.1, 0.9)
    outcome = _goodput(distserve_13b, opt13b, task, slo, sample)
    assert outcome.goodput > 0 and outcome.reason is None
    spec = instance_spec(task, distserve_13b.timing(1, 1), LIMITS, opt13b.kv_bytes_per_token)

    def attainment(rate):
        return task_attainment(task, simulate_task(task, spec, sample, rate), slo)

    assert attainment(outcome.goodput) >= 0.9
    assert attainment(outcome.goodput * 1.1) < 0.9
    assert outcome.goodput <= outcome.bound


def test_a_tighter_ttft_never_raises_goodput(distserve_13b, opt13b, make_sample):
    sample = make_sample(150)
    task = PhaseTask("prefill", 2, 1, 163008)
    goodputs = [_goodput(distserve_13b, opt13b, task, Slo(ttft, 0.1, 0.9), sample).goodput
                for ttft in (0.5, 0.3, 0.2, 0.15, 0.1)]
    assert goodputs == sorted(goodputs, reverse=True)
    assert goodputs[0] > goodputs[-1]


def test_a_looser_tpot_never_lowers_decode_goodput(distserve_13b, opt13b, make_sample):
    sample = make_sample(150)
    task = PhaseTask("decode", 1, 1, 66144, "nvlink", 600.0)
    goodputs = [_goodput(distserve_13b, opt13b, task, Slo(1.0, tpot, 0.9), sample).goodput
                for tpot in (0.03, 0.04, 0.06, 0.1)]
    assert goodputs == sorted(goodputs)
    assert goodputs[0] < goodputs[-1]


def test_unreachable_slo_is_explained_without_simulating(distserve_13b, opt13b, make_sample):
    outcome = _goodput(distserve_13b, opt13b, PhaseTask("prefill", 1, 1, 66144),
                       Slo(0.03, 0.1, 0.9), make_sample(100))
    assert outcome.goodput == 0 and not outcome.points
    assert "takes 0." in outcome.reason and "TTFT target of 0.03 s" in outcome.reason


def test_decode_goodput_stays_below_saturation(distserve_13b, opt13b, make_sample):
    # TPOT so loose that only throughput limits the instance.
    outcome = _goodput(distserve_13b, opt13b, PhaseTask("decode", 1, 1, 66144, "nvlink", 600.0),
                       Slo(10.0, 10.0, 0.9), make_sample(150))
    assert 0 < outcome.goodput <= outcome.bound * 1.25
