"""The plan as people read it (a table) and as programs read it (plan.json)."""

from __future__ import annotations

from dataclasses import asdict

from planner.cluster import Cluster
from planner.goodput import Slo
from planner.memory import EngineLimits
from planner.model_catalog import ModelSpec
from planner.plan import Plan, SearchResult

RUNNERS_UP = 4


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value == float("inf"):
        return "never"
    return f"{value:.3f} s"


def _replicas(plan: Plan) -> str:
    if plan.kind == "colocated":
        assert plan.colocated is not None
        return f"{plan.colocated.replicas}"
    assert plan.prefill is not None and plan.decode is not None
    return f"{plan.prefill.replicas} + {plan.decode.replicas}"


def table(result: SearchResult) -> str:
    """The recommended plan, runners-up and the best colocated deployment, one row each."""
    rows = [("", "configuration", "GPUs", "goodput/GPU", "p90 TTFT", "p90 TPOT", "attain",
             "replicas", "serves", "vs colocated")]
    base = result.best_colocated
    chosen = result.recommended
    others = [p for p in result.plans[:1 + RUNNERS_UP] if p is not chosen][:RUNNERS_UP]
    shown = [chosen, *others] + ([base] if base and base is not chosen else [])
    for i, plan in enumerate(shown):
        p = plan.predicted
        gain = (f"{plan.goodput_per_gpu / base.goodput_per_gpu:.2f}x"
                if base and base.goodput_per_gpu > 0 else "-")
        rows.append((
            "best" if i == 0 else ("baseline" if plan is base else f"#{i + 1}"),
            plan.label(),
            str(plan.gpus),
            f"{plan.goodput_per_gpu:.3g}",
            _seconds(p.ttft_p90 if p else None),
            _seconds(p.tpot_p90 if p else None),
            f"{p.attainment:.0%}" if p else "-",
            _replicas(plan),
            f"{plan.capacity:.3g}/s",
            gain,
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    left = {1}
    lines = []
    for n, row in enumerate(rows):
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in
                 enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _disaggregated_lines(best: Plan, slo: Slo, target: str) -> list[str]:
    assert best.prefill is not None and best.decode is not None
    lines = [
        f"  one prefill {best.prefill.shape()} instance sustains {best.prefill.goodput:.3g} req/s "
        f"within TTFT {slo.ttft:g} s; one decode {best.decode.shape()} instance "
        f"{best.decode.goodput:.3g} req/s within TPOT {slo.tpot:g} s "
        f"(each for {slo.attainment:.0%} of requests).",
    ]
    serves = (f"  {best.prefill.replicas} prefill + {best.decode.replicas} decode instances "
              f"({best.gpus} GPUs) for {target}: they serve up to {best.capacity:.3g} req/s")
    if best.affinity == "high":
        serves += (f" ({best.capacity / best.gpus:.3g} per GPU; the goodput per GPU above "
                   "mixes the roles in the ideal ratio, which whole instances only approach)")
    return [*lines, serves + "."]


def _colocated_lines(plan: Plan, slo: Slo, target: str) -> list[str]:
    assert plan.colocated is not None
    role = plan.colocated
    return [
        f"  one colocated {role.shape()} instance sustains {role.goodput:.3g} req/s within TTFT "
        f"{slo.ttft:g} s and TPOT {slo.tpot:g} s (for {slo.attainment:.0%} of requests).",
        f"  {role.replicas} colocated instances ({plan.gpus} GPUs) for {target}: they serve up "
        f"to {plan.capacity:.3g} req/s.",
    ]


def explain(result: SearchResult, slo: Slo, rate: float | None) -> str:
    """A few sentences on the chosen plan and what the search ruled out."""
    chosen, best = result.recommended, result.best
    target = f"the target {rate:g} req/s" if rate is not None else "the whole cluster"
    lines = [f"Best: {chosen.label()}. {chosen.layout}."]
    if chosen.kind == "colocated":
        lines += _colocated_lines(chosen, slo, target)
    else:
        lines += _disaggregated_lines(chosen, slo, target)
    if chosen.predicted is not None:
        p = chosen.predicted
        lines.append(f"  Simulated end to end at {p.rate:.3g} req/s: {p.attainment:.1%} of "
                     "requests meet both SLOs.")
    if chosen.kind == "colocated" and best is None:
        lines.append("  No disaggregated deployment fits this cluster: it needs a prefill and a "
                     "decode instance, each on GPUs of its own.")
    elif chosen.kind == "colocated":
        lines.append(f"  Recommended over the best disaggregated plan ({best.label()}): as "
                     f"planned, in whole instances, it serves {chosen.served_per_gpu:.3g} req/s "
                     f"per GPU against {best.served_per_gpu:.3g} "
                     f"({chosen.served_per_gpu / best.served_per_gpu:.2f}x). "
                     "--deployment disaggregated plans that one instead.")
    gain = result.gain
    base = result.best_colocated
    if gain is not None and base is not None:
        verdict = "gains" if gain >= 1 else "loses"
        lines.append(f"  Disaggregation {verdict}: {gain:.2f}x the goodput per GPU of the best "
                     f"colocated deployment ({base.label()}, {base.goodput_per_gpu:.3g}), "
                     "with prefill and decode instances in their ideal ratio (DistServe's "
                     "measure).")
        policies = ", ".join(f"{policy} {value:.3g}" for policy, value in
                             sorted(result.colocated_by_policy().items()))
        lines.append(f"  Colocated goodput per GPU by scheduling policy: {policies}.")
    skipped = sum(1 for o in result.outcomes if o.reason and o.reason.startswith("skipped"))
    evaluated = len(result.outcomes) - skipped
    lines.append(f"  Searched {len(result.outcomes)} instance configurations ({evaluated} "
                 f"simulated, {skipped} skipped as unable to win) with {result.latency_model}, "
                 f"{result.num_requests} requests per simulation.")
    for shape, reason in result.dropped:
        lines.append(f"  dropped {shape}: {reason}")
    return "\n".join(lines)


def plan_json(result: SearchResult, model: ModelSpec, cluster: Cluster, slo: Slo,
              limits: EngineLimits, workload: str, rate: float | None, command: str) -> dict:
    """plan.json (times in s, rates in req/s): the best disaggregated plan, then which kind
    is recommended ("deployment") and that plan in full ("recommended"), then the context."""
    best = result.best
    base = result.best_colocated
    assert best is None or (best.prefill is not None and best.decode is not None)
    predicted = best.predicted.to_json() if best and best.predicted else None
    return {
        # The best disaggregated plan; all None when no prefill + decode pair fits.
        "prefill": best.prefill.to_json() if best and best.prefill else None,
        "decode": best.decode.to_json() if best and best.decode else None,
        "gpus": best.gpus if best else None,
        "goodput_per_gpu": best.goodput_per_gpu if best else None,
        "colocated_goodput_per_gpu": base.goodput_per_gpu if base else None,
        "gain_over_colocated": result.gain,
        "predicted": predicted,
        "placement": {"affinity": best.affinity, "layout": best.layout} if best else None,
        "capacity": best.capacity if best else None,
        "deployment": result.deployment,
        "recommended": result.recommended.to_json(),
        "target_rate": rate,
        "slo": asdict(slo),
        "model": {"name": model.name, "hf_id": model.hf_id, "dtype": model.dtype},
        "cluster": {"gpu": cluster.gpu.name, "nodes": cluster.nodes,
                    "gpus_per_node": cluster.gpus_per_node,
                    "network_gbps": cluster.network_gbps},
        "engine": asdict(limits),
        "workload": workload,
        "latency_model": result.latency_model,
        "num_requests": result.num_requests,
        "runners_up": [p.to_json() for p in result.plans[1:1 + RUNNERS_UP]],
        "colocated": base.to_json() if base else None,
        "colocated_by_policy": result.colocated_by_policy(),
        "dropped": [{"configuration": c, "reason": r} for c, r in result.dropped],
        "command": command,
    }
