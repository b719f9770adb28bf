"""The whole search: behaviour a user planning a cluster would notice."""

from __future__ import annotations

import pytest

from planner.errors import InfeasibleError, SloUnreachableError
from planner.fitted_profile import BUNDLED_PROFILE, bundled_data_path, load_profile
from planner.goodput import Slo
from planner.model_catalog import load_model
from planner.search import SearchSettings, build_tasks, choose_deployment, search


def _search(context, distserve_memory, **settings):
    return search(context, distserve_memory(context), SearchSettings(**settings))


def test_more_gpus_never_lower_goodput(opt13b, distserve_13b, make_context, make_sample,
                                       distserve_memory):
    sample = make_sample(120)
    best = []
    for nodes, per_node in [(1, 2), (1, 4), (2, 4)]:
        context = make_context(opt13b, distserve_13b, nodes, per_node, sample=sample)
        best.append(_search(context, distserve_memory).best.goodput_per_gpu)
    assert best == sorted(best)


def test_tighter_ttft_never_raises_goodput(opt13b, distserve_13b, make_context, make_sample,
                                          distserve_memory):
    sample = make_sample(120)
    best = []
    for ttft in (0.4, 0.25, 0.15):
        context = make_context(opt13b, distserve_13b, slo=Slo(ttft, 0.1, 0.9), sample=sample)
        best.append(_search(context, distserve_memory).best.goodput_per_gpu)
    assert best == sorted(best, reverse=True)


def test_a_rate_beyond_the_cluster_says_how_many_gpus_it_needs(opt13b, distserve_13b,
                                                               make_context, make_sample,
                                                               distserve_memory):
    context = make_context(opt13b, distserve_13b, 1, 4, sample=make_sample(80))
    with pytest.raises(InfeasibleError, match=r"500 req/s needs at least \d+ GPUs.*has 4"):
        _search(context, distserve_memory, rate=500.0)


def test_configurations_that_do_not_fit_are_dropped_with_the_reason(make_context, make_sample,
                                                                   distserve_memory):
    model = load_model("facebook/opt-66b")
    latency = load_profile(bundled_data_path(BUNDLED_PROFILE), [model.name])
    context = make_context(model, latency, 1, 8, slo=Slo(2.5, 0.15, 0.9),
                           sample=make_sample(100))
    tasks, dropped = build_tasks(context, distserve_memory(context), SearchSettings(), 2048)
    reasons = dict(dropped)
    assert "more than 72.0 GiB usable" in reasons["tp1"]
    assert "no coefficients for tp=6" in reasons["tp6"]
    assert {t.tp for t in tasks} == {2, 3, 4, 8}


def test_a_model_that_fits_nowhere_is_an_error(make_context, make_sample, distserve_memory):
    model = load_model("facebook/opt-175b")
    latency = load_profile(bundled_data_path(BUNDLED_PROFILE), ["facebook/opt-66b"])
    context = make_context(model, latency, 1, 2, sample=make_sample(50))
    with pytest.raises(InfeasibleError, match="fits no configuration.*tp2: weights 162.6 GiB"):
        _search(context, distserve_memory)


def test_an_slo_nothing_meets_names_the_closest_configuration(opt13b, distserve_13b,
                                                              make_context, make_sample,
                                                              distserve_memory):
    context = make_context(opt13b, distserve_13b, slo=Slo(0.02, 0.1, 0.9),
                           sample=make_sample(60))
    with pytest.raises(SloUnreachableError, match=r"closest, prefill tp4.*median prompt"):
        _search(context, distserve_memory)


def test_pruning_and_processes_do_not_change_the_answer(opt13b, distserve_13b, make_context,
                                                        make_sample, distserve_memory):
    context = make_context(opt13b, distserve_13b, 1, 4, sample=make_sample(100))
    one = _search(context, distserve_memory, workers=1)
    two = _search(context, distserve_memory, workers=2)
    assert [p.label() for p in one.plans] == [p.label() for p in two.plans]
    assert one.best.goodput_per_gpu == pytest.approx(two.best.goodput_per_gpu)
    # Every configuration skipped as unable to win really would not have won its phase.
    evaluated = {o.task.key: o for o in one.outcomes if not (o.reason or "").startswith("skip")}
    for skipped in (o for o in one.outcomes if (o.reason or "").startswith("skipped")):
        full = context.evaluate(skipped.task)
        rivals = [o.per_gpu for o in evaluated.values()
                  if (o.task.phase, o.task.link) == (skipped.task.phase, skipped.task.link)]
        assert full.per_gpu <= max(rivals) * 1.001


def test_target_rate_sizes_replicas_and_is_simulated(opt13b, distserve_13b, make_context,
                                                     make_sample, distserve_memory):
    context = make_context(opt13b, distserve_13b, 2, 8, sample=make_sample(120))
    result = _search(context, distserve_memory, rate=15.0)
    best = result.best
    assert best.capacity >= 15.0 and best.gpus <= 16
    assert best.predicted.rate == 15.0
    assert best.predicted.attainment >= 0.9
    assert result.best_colocated is not None and result.gain is not None


def test_affinity_choice_is_respected(opt13b, distserve_13b, make_context, make_sample,
                                      distserve_memory):
    context = make_context(opt13b, distserve_13b, 2, 4, sample=make_sample(80))
    assert {p.affinity for p in _search(context, distserve_memory, affinity="high").plans} == {
        "high"}
    assert {p.affinity for p in _search(context, distserve_memory, affinity="low").plans} == {
        "low"}


def test_loose_slos_recommend_colocated_workers_that_serve_more(opt13b, distserve_13b,
                                                               make_context, make_sample,
                                                               distserve_memory):
    # At 5 s / 0.5 s nothing is latency-bound: every GPU doing both phases serves the most.
    context = make_context(opt13b, distserve_13b, slo=Slo(5.0, 0.5, 0.9),
                           sample=make_sample(80))
    result = _search(context, distserve_memory)
    assert result.deployment == "colocated"
    chosen = result.recommended
    assert chosen.kind == "colocated" and chosen.policy == "chunked"
    assert chosen.served_per_gpu > result.best.served_per_gpu
    assert chosen.predicted is not None and chosen.predicted.attainment >= 0.9

    forced = _search(context, distserve_memory, deployment="disaggregated")
    assert forced.deployment == "disaggregated" and forced.recommended is forced.best


def test_disaggregation_is_recommended_where_it_serves_more(opt13b, distserve_13b,
                                                           make_context, make_sample,
                                                           distserve_memory):
    # A loose TTFT with a tight TPOT: decode wants its own GPUs, prefill can queue.
    context = make_context(opt13b, distserve_13b, slo=Slo(2.0, 0.03, 0.9),
                           sample=make_sample(80))
    result = _search(context, distserve_memory)
    assert result.deployment == "disaggregated"
    assert result.recommended is result.best
    assert result.gain is not None and result.gain > 1

    forced = _search(context, distserve_memory, deployment="colocated")
    assert forced.deployment == "colocated"
    assert forced.recommended.policy == "chunked"
    assert forced.recommended.served_per_gpu < forced.best.served_per_gpu


def test_colocated_that_meets_no_slo_cannot_be_forced(small_plan):
    result, context = small_plan
    with pytest.raises(SloUnreachableError, match="no colocated configuration"):
        choose_deployment("colocated", result.best, None, context)
    assert choose_deployment("auto", result.best, None, context) == "disaggregated"
