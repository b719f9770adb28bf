"""Helm values exactly as the chart's contract says."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest
import yaml

from planner.errors import PlannerError
from planner.helm_values import render_values
from planner.model_catalog import load_model

CHART = Path(__file__).resolve().parents[2] / "helm" / "pdserve"


def merged(defaults: dict, overrides: dict) -> dict:
    """Helm's merge of a values file over the chart's defaults."""
    out = dict(defaults)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def test_values_hold_the_plan_and_nothing_else(small_plan, opt13b):
    result, _ = small_plan
    text = render_values(result, opt13b, "pdserve plan --model facebook/opt-13b", "TTFT 0.25 s")
    values = yaml.safe_load(text)
    best = result.best
    assert values == {
        "prefill": {"replicas": best.prefill.replicas, "tensorParallelSize": best.prefill.tp,
                    "pipelineParallelSize": 1},
        "decode": {"replicas": best.decode.replicas, "tensorParallelSize": best.decode.tp,
                   "pipelineParallelSize": 1},
        "placement": {"affinity": best.affinity},
        "model": {"source": "huggingface", "name": "facebook/opt-13b"},
    }
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert header[0] == "# Written by: pdserve plan --model facebook/opt-13b"
    assert any("SLOs: TTFT 0.25 s" in line for line in header)
    assert any("req/s per GPU" in line for line in header)


def test_values_pass_the_charts_schema(small_plan, opt13b):
    result, _ = small_plan
    values = yaml.safe_load(render_values(result, opt13b, "pdserve plan", "slo"))
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.validate(merged(defaults, values), schema)


def test_model_section_only_when_the_repository_is_known(small_plan, opt13b):
    result, _ = small_plan
    local = replace(opt13b, hf_id=None)
    assert "model" not in yaml.safe_load(render_values(result, local, "c", "s"))


def test_pipeline_plans_cannot_be_written(small_plan):
    result, _ = small_plan
    best = result.plans[0]
    piped = replace(result, plans=[replace(best, prefill=replace(best.prefill, pp=2))])
    with pytest.raises(PlannerError, match="--max-pp 1"):
        render_values(piped, load_model("opt-13b"), "c", "s")


def test_a_colocated_plan_is_written_as_the_colocated_pool(colocated_plan, opt13b):
    result, _ = colocated_plan
    text = render_values(result, opt13b, "pdserve plan", "slo")
    values = yaml.safe_load(text)
    chosen = result.recommended
    assert values == {
        "prefill": {"replicas": 0},
        "decode": {"replicas": 0},
        "colocated": {"replicas": chosen.colocated.replicas,
                      "tensorParallelSize": chosen.colocated.tp, "pipelineParallelSize": 1,
                      "maxNumBatchedTokens": chosen.budget},
        "model": {"source": "huggingface", "name": "facebook/opt-13b"},
    }
    assert "what the best disaggregated plan serves per GPU" in text
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.validate(merged(defaults, values), schema)
