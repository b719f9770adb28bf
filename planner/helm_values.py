"""Helm values for the pdserve chart from a plan (the contract in the chart's values.yaml)."""

from __future__ import annotations

import yaml

from planner.errors import PlannerError
from planner.model_catalog import ModelSpec
from planner.plan import Plan, RolePlan, SearchResult


def _pool(role: RolePlan) -> dict:
    return {"replicas": role.replicas, "tensorParallelSize": role.tp,
            "pipelineParallelSize": role.pp}


def render_values(result: SearchResult, model: ModelSpec, command: str, slo_line: str) -> str:
    """The values file text: header comments, then the recommended pools, placement and model."""
    plan: Plan = result.recommended
    if any(role.pp > 1 for role in plan.roles):
        raise PlannerError("the plan uses pipeline parallelism, which the engine and chart do not "
                           "support yet; plan with --max-pp 1 to write Helm values")
    if plan.colocated is not None:
        # Both pools of the pair at zero: the chart then runs only both-role workers.
        colocated = _pool(plan.colocated) | {"maxNumBatchedTokens": plan.budget}
        values: dict = {"prefill": {"replicas": 0}, "decode": {"replicas": 0},
                        "colocated": colocated}
        best = result.best
        versus = (f", {plan.served_per_gpu / best.served_per_gpu:.2f}x what the best "
                  "disaggregated plan serves per GPU" if best else "")
    else:
        assert plan.prefill is not None and plan.decode is not None
        values = {"prefill": _pool(plan.prefill), "decode": _pool(plan.decode),
                  "placement": {"affinity": plan.affinity}}
        gain = result.gain
        versus = f", {gain:.2f}x the best colocated deployment" if gain else ""
    if model.hf_id:
        values["model"] = {"source": "huggingface", "name": model.hf_id}
    header = [
        f"# Written by: {command}",
        f"# SLOs: {slo_line}",
        f"# Predicted goodput: {plan.goodput_per_gpu:.3g} req/s per GPU "
        f"({plan.capacity:.3g} req/s on {plan.gpus} GPUs){versus}",
    ]
    if plan.predicted is not None:
        p = plan.predicted
        header.append(f"# Simulated at {p.rate:.3g} req/s: p90 TTFT {p.ttft_p90:.3g} s, "
                      f"p90 TPOT {p.tpot_p90:.3g} s, {p.attainment:.1%} of requests meet both")
    header.append(f"# Layout: {plan.layout}")
    return "\n".join(header) + "\n" + yaml.safe_dump(values, sort_keys=False)
