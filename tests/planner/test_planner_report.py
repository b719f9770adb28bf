"""The plan table and plan.json."""

from __future__ import annotations

import json

from planner.goodput import Slo
from planner.report import explain, plan_json, table


def test_table_has_best_runners_up_and_baseline(small_plan):
    result, _ = small_plan
    lines = table(result).splitlines()
    assert lines[0].split() == ["configuration", "GPUs", "goodput/GPU", "p90", "TTFT", "p90",
                                "TPOT", "attain", "replicas", "serves", "vs", "colocated"]
    assert lines[2].lstrip().startswith("best")
    assert lines[-1].lstrip().startswith("baseline") and "colocated" in lines[-1]
    assert "1.00x" in lines[-1]
    assert len(lines) >= 4


def test_explanation_states_the_gain_and_what_was_dropped(small_plan):
    result, context = small_plan
    text = explain(result, Slo(0.25, 0.1, 0.9), None)
    assert text.startswith("Best: P ")
    assert "the goodput per GPU of the best colocated deployment" in text
    assert "dropped tp5: the latency profile has no coefficients" not in text  # 1 x 4 GPUs
    assert "simulated" in text


def test_plan_json_has_the_fields_the_issue_lists(small_plan):
    result, context = small_plan
    data = plan_json(result, context.model, context.cluster, context.slo, context.limits,
                     "synthetic:in=755,out=187", None, "pdserve plan ...")
    json.dumps(data)  # plain JSON
    for role in ("prefill", "decode"):
        assert {"tp", "pp", "replicas"} <= set(data[role])
    assert data["gpus"] == result.best.gpus
    assert data["goodput_per_gpu"] > 0 and data["colocated_goodput_per_gpu"] > 0
    assert set(data["predicted"]) >= {"ttft_p90", "tpot_p90"}
    assert 0 < data["predicted"]["ttft_p90"] < 5  # seconds, not milliseconds
    assert data["gain_over_colocated"] == data["goodput_per_gpu"] / data[
        "colocated_goodput_per_gpu"]


def test_a_colocated_recommendation_leads_the_table_and_says_what_it_beats(colocated_plan):
    result, context = colocated_plan
    lines = table(result).splitlines()
    assert lines[2].split()[:2] == ["best", "colocated"] and "chunked" in lines[2]
    disaggregated = [line for line in lines[3:] if line.split()[1] == "P"]
    assert disaggregated and disaggregated[0].split()[0] == "#2"
    text = explain(result, context.slo, None)
    assert text.startswith("Best: colocated tp")
    assert f"Recommended over the best disaggregated plan ({result.best.label()}" in text
    assert "--deployment disaggregated" in text


def test_plan_json_names_the_recommended_deployment(colocated_plan):
    result, context = colocated_plan
    data = plan_json(result, context.model, context.cluster, context.slo, context.limits,
                     "synthetic:in=755,out=187", None, "pdserve plan ...")
    assert data["deployment"] == "colocated"
    chosen = data["recommended"]
    assert chosen["kind"] == "colocated" and chosen["policy"] == "chunked"
    assert chosen["colocated"]["replicas"] >= 1 and chosen["budget"] > 0
    assert chosen["goodput_per_gpu"] > data["goodput_per_gpu"]  # the disaggregated plan's
    assert data["prefill"]["replicas"] >= 1  # the issue's fields still describe that plan
