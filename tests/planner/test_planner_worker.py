"""The search context survives its trip to a worker process as JSON."""

from __future__ import annotations

import json

from planner.cluster import Cluster
from planner.goodput import PhaseTask
from planner.gpu_catalog import get_gpu
from planner.model_catalog import load_model
from planner.roofline import Calibration, RooflineLatencyModel
from planner.worker import Context, evaluate_json, init_worker, task_to_json


def test_profile_context_round_trip_evaluates_the_same(opt13b, distserve_13b, make_context,
                                                       make_sample):
    context = make_context(opt13b, distserve_13b, sample=make_sample(60))
    task = PhaseTask("prefill", 2, 1, 163008)
    init_worker(context.to_json())
    remote = json.loads(evaluate_json(task_to_json(task)))
    local = context.evaluate(task)
    assert remote["goodput"] == local.goodput
    assert [tuple(p) for p in remote["points"]] == local.points


def test_roofline_context_keeps_its_calibration(make_context, make_sample):
    model = load_model("Llama-3.1-8B")
    cluster = Cluster(get_gpu("a100-80g-sxm"), 1, 4, 25)  # the one make_context builds
    latency = RooflineLatencyModel(model, cluster, Calibration(compute_efficiency=0.5))
    context = make_context(model, latency, sample=make_sample(30))
    again = Context.from_json(context.to_json())
    assert again.latency.calibration.compute_efficiency == 0.5
    assert again.latency.timing(2, 1).prefill_ms(1000, 1e6) == latency.timing(2, 1).prefill_ms(
        1000, 1e6)
