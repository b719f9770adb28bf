"""The placement search: every instance shape in every role, their goodputs, and the best plans.

1. Enumerate shapes (tp divides the attention heads and stays inside a node, pp divides the
   layers and is at most --max-pp); drop those the memory model or the latency model cannot
   run, keeping the reason.
2. Turn shapes into phase tasks: prefill; decode with KV over the network (high affinity) and
   over NVLink (low affinity); colocated, chunked at a few prefill token budgets and
   prefill-first (vLLM's original policy, DistServe's baseline).
3. Evaluate tasks across worker processes, most promising first (by a throughput bound that
   ignores latency), skipping a task whose bound per GPU is already below the best goodput per GPU
   found for its kind: it cannot win.
4. Combine goodputs into deployments (placement.py), then simulate the best ones end to end.
5. Recommend the disaggregated or the colocated deployment, whichever serves more requests
   per GPU (or the kind --deployment asks for).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from planner.arrivals import arrival_times
from planner.errors import InfeasibleError, SloUnreachableError
from planner.goodput import (
    TOLERANCE,
    PhaseOutcome,
    PhaseTask,
    instance_spec,
    long_enough,
    max_concurrency,
    throughput_bound,
)
from planner.memory import MemoryModel
from planner.placement import (
    colocated_plans,
    gpus_needed,
    high_affinity_plans,
    low_affinity_plans,
)
from planner.plan import Plan, Prediction, RolePlan, SearchResult, deployable_colocated
from planner.simulator import InstanceSpec, simulate_deployment
from planner.worker import Context, evaluate_json, init_worker, task_to_json

# Plans simulated end to end (the table's rows).
VERIFIED_PLANS = 5
# Tasks evaluated between two pruning decisions.
WAVE = 4


@dataclass(frozen=True)
class SearchSettings:
    affinity: str = "auto"  # "high", "low" or "auto" (both, best wins)
    max_tp: int | None = None  # default: GPUs per node
    max_pp: int = 1
    rate: float | None = None  # target total rate, requests/s; None: fill the cluster
    workers: int = 1
    deployment: str = "auto"  # "disaggregated", "colocated" or "auto" (more goodput per GPU)


def _divisors(n: int, limit: int) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def enumerate_shapes(context: Context, settings: SearchSettings) -> list[tuple[int, int]]:
    """(tp, pp) pairs worth considering on this cluster, before memory and latency checks."""
    model, cluster = context.model, context.cluster
    max_tp = min(settings.max_tp or cluster.gpus_per_node, cluster.gpus_per_node)
    shapes = []
    for tp in _divisors(model.num_heads, max_tp):
        if model.num_kv_heads % tp and tp % model.num_kv_heads:
            continue
        for pp in _divisors(model.num_layers, settings.max_pp):
            if tp * pp <= cluster.total_gpus:
                shapes.append((tp, pp))
    return shapes


def _shape(tp: int, pp: int) -> str:
    return f"tp{tp}" + (f"pp{pp}" if pp > 1 else "")


def _colocated_budgets(budget: int) -> list[int]:
    # A smaller budget shortens the steps decodes wait for, at the cost of prefill throughput.
    return sorted({max(budget // 4, 64), max(budget // 2, 64), budget})


def build_tasks(context: Context, memory: MemoryModel, settings: SearchSettings,
                longest_request: int) -> tuple[list[PhaseTask], list[tuple[str, str]]]:
    """Phase tasks for every shape that fits, and (shape, reason) for those that don't."""
    tasks: list[PhaseTask] = []
    dropped: list[tuple[str, str]] = []
    cluster = context.cluster
    for tp, pp in enumerate_shapes(context, settings):
        fit = memory.fit(tp, pp, longest_request)
        reason = fit.reason or context.latency.unsupported(tp, pp)
        if reason:
            dropped.append((_shape(tp, pp), reason))
            continue
        capacity = fit.kv_capacity_tokens
        tasks.append(PhaseTask("prefill", tp, pp, capacity))
        if settings.affinity in ("high", "auto"):
            tasks.append(PhaseTask("decode", tp, pp, capacity, "network",
                                   cluster.kv_link_gb_s(tp * pp, same_node=False)))
        if settings.affinity in ("low", "auto"):
            tasks.append(PhaseTask("decode", tp, pp, capacity, "nvlink",
                                   cluster.kv_link_gb_s(tp * pp, same_node=True)))
        default_budget = context.limits.max_num_batched_tokens
        for budget in _colocated_budgets(default_budget):
            tasks.append(PhaseTask("colocated", tp, pp, capacity, budget=budget,
                                   policy="chunked"))
        tasks.append(PhaseTask("colocated", tp, pp, capacity, budget=default_budget,
                               policy="prefill-first"))
    return tasks, dropped


def _kind(task: PhaseTask) -> tuple[str, str, str]:
    # Each colocated policy keeps its own best, so the table can compare with either.
    return (task.phase, task.link, task.policy)


def evaluate_tasks(context: Context, tasks: list[PhaseTask], workers: int,
                   progress: Callable[[PhaseTask], None] | None = None) -> list[PhaseOutcome]:
    """Goodput of every task, skipping those whose bound per GPU cannot beat their kind's best."""
    bounds = {}
    for task in tasks:
        timing = context.latency.timing(task.tp, task.pp)
        bounds[task.key] = throughput_bound(task, timing, context.sample, context.limits,
                                            context.model.kv_bytes_per_token)
    order = sorted(tasks, key=lambda t: -bounds[t.key] / t.gpus)
    best: dict[tuple[str, str, str], float] = {}
    outcomes: list[PhaseOutcome] = []

    def record(outcome: PhaseOutcome) -> None:
        outcomes.append(outcome)
        kind = _kind(outcome.task)
        best[kind] = max(best.get(kind, 0.0), outcome.per_gpu)
        if progress:
            progress(outcome.task)

    def cannot_win(task: PhaseTask) -> bool:
        bound_per_gpu = bounds[task.key] / task.gpus
        if bound_per_gpu >= best.get(_kind(task), 0.0):
            return False
        record(PhaseOutcome(task, 0.0, bounds[task.key],
                            f"skipped: its throughput bound ({bound_per_gpu:.3g} req/s per GPU) "
                            f"is below the best goodput found ({best[_kind(task)]:.3g})"))
        return True

    def evaluate_inline(wave: list[PhaseTask]) -> list[PhaseOutcome]:
        return [context.evaluate(task) for task in wave]

    def run(evaluate_wave: Callable[[list[PhaseTask]], list[PhaseOutcome]]) -> None:
        pending = list(order)
        while pending:
            # Decisions to skip use only finished waves, so the answer does not depend on how
            # many workers there are or in which order they finish.
            wave: list[PhaseTask] = []
            while pending and len(wave) < WAVE:
                task = pending.pop(0)
                if not cannot_win(task):
                    wave.append(task)
            for outcome in evaluate_wave(wave):
                record(outcome)

    if workers <= 1:
        run(evaluate_inline)
        return outcomes
    with ProcessPoolExecutor(workers, initializer=init_worker,
                             initargs=(context.to_json(),)) as pool:

        def evaluate_parallel(wave: list[PhaseTask]) -> list[PhaseOutcome]:
            results = pool.map(evaluate_json, [task_to_json(t) for t in wave])
            return [_outcome(task, json.loads(data)) for task, data in zip(wave, results,
                                                                             strict=True)]

        run(evaluate_parallel)
    return outcomes


def _outcome(task: PhaseTask, data: dict) -> PhaseOutcome:
    return PhaseOutcome(task, data["goodput"], data["bound"], data["reason"],
                        [tuple(p) for p in data["points"]], data["idle_attainment"])


def _unreachable(outcomes: list[PhaseOutcome], phase: str) -> str:
    """Why the configuration of a phase that came closest fell short: the most telling."""
    tried = [o for o in outcomes if o.task.phase == phase and o.idle_attainment is not None]
    if not tried:
        return "no configuration was evaluated"
    closest = max(tried, key=lambda o: (o.idle_attainment, o.task.gpus, o.task.link_gb_s))
    return f"the closest, {closest.task.label()}: {closest.reason}"


def predict(context: Context, plan: Plan, rate: float, *, once: bool = False) -> Prediction:
    """Simulate the whole deployment at `rate` requests/s.

    The sample is repeated until a decode batch could fill several times over (so a rate the
    deployment only survives for a while does not pass), unless `once`: then it runs exactly as
    given, which is what a load generator sending the same trace measures.
    """
    limits, kv = context.limits, context.model.kv_bytes_per_token
    cluster = context.cluster

    def specs(role: RolePlan | None, phase: str, same_node: bool = False) -> list[InstanceSpec]:
        if role is None:
            return []
        link = cluster.kv_link_gb_s(role.gpus_per_instance, same_node)
        task = PhaseTask(phase, role.tp, role.pp, role.kv_capacity_tokens, link_gb_s=link,
                         budget=plan.budget, policy=plan.policy)
        spec = instance_spec(task, context.latency.timing(role.tp, role.pp), limits, kv)
        return [spec] * role.replicas

    decoding = [plan.colocated] if plan.kind == "colocated" else [plan.decode]
    concurrency = sum(max_concurrency(r.kv_capacity_tokens, context.sample, limits) * r.replicas
                      for r in decoding if r is not None)
    sample = context.sample if once else long_enough(context.sample, concurrency)
    if plan.kind == "colocated":
        first, second = specs(plan.colocated, "colocated"), []
    else:
        first = specs(plan.prefill, "prefill")
        second = specs(plan.decode, "decode", same_node=plan.affinity == "low")
    result = simulate_deployment(first, second, arrival_times(sample.gaps, rate),
                                 sample.prompts, sample.outputs)
    slo = context.slo
    return Prediction(rate, result.percentile("ttft", 0.9), result.percentile("tpot", 0.9),
                      result.attainment(slo.ttft, slo.tpot))


def search(context: Context, memory: MemoryModel, settings: SearchSettings,
           progress: Callable[[int], Callable[[PhaseTask], None]] | None = None) -> SearchResult:
    """Find the best disaggregated plans and the colocated baseline for `context`.

    `progress(total)` is called once with the number of tasks and returns a per-task callback.
    """
    sample = context.sample
    longest = max(p + o for p, o in zip(sample.prompts, sample.outputs, strict=True))
    tasks, dropped = build_tasks(context, memory, settings, longest)
    if not tasks:
        reasons = "; ".join(f"{shape}: {why}" for shape, why in dropped)
        raise InfeasibleError(
            f"{context.model.name} fits no configuration on {context.cluster.nodes} x "
            f"{context.cluster.gpus_per_node} {context.cluster.gpu.description}: {reasons}"
        )
    tick = progress(len(tasks)) if progress else None
    outcomes = evaluate_tasks(context, tasks, settings.workers, tick)

    good = [o for o in outcomes if o.goodput > 0]
    prefills = [o for o in good if o.task.phase == "prefill"]
    if not prefills:
        raise SloUnreachableError(f"no prefill configuration meets TTFT {context.slo.ttft:g} s "
                                  f"for {context.slo.attainment:.0%} of requests; "
                                  f"{_unreachable(outcomes, 'prefill')}")
    decodes_net = [o for o in good if o.task.phase == "decode" and o.task.link == "network"]
    decodes_nvl = [o for o in good if o.task.phase == "decode" and o.task.link == "nvlink"]
    if not decodes_net and not decodes_nvl:
        raise SloUnreachableError(f"no decode configuration meets TPOT {context.slo.tpot:g} s "
                                  f"for {context.slo.attainment:.0%} of requests; "
                                  f"{_unreachable(outcomes, 'decode')}")
    cluster, rate = context.cluster, settings.rate
    plans = high_affinity_plans(prefills, decodes_net, cluster, rate)
    plans += low_affinity_plans(prefills, decodes_nvl, cluster, rate)
    plans.sort(key=lambda p: (-p.goodput_per_gpu, p.gpus))
    colocated = colocated_plans([o for o in good if o.task.phase == "colocated"], cluster, rate)
    deployable = deployable_colocated(colocated)
    # A cluster too small for a prefill and a decode instance (one GPU) still gets a plan:
    # colocated, unless disaggregation was asked for.
    if not plans and (deployable is None or settings.deployment == "disaggregated"):
        if rate is None:
            raise InfeasibleError("no disaggregated deployment fits the cluster: it needs at "
                                  "least one prefill and one decode instance")
        need = gpus_needed(prefills, decodes_net, decodes_nvl, cluster, rate)
        raise InfeasibleError(f"the target rate of {rate:g} req/s needs at least {need} GPUs "
                              f"in whole instances; the cluster has {cluster.total_gpus}")
    deployment = choose_deployment(settings.deployment, plans[0] if plans else None,
                                   deployable, context)
    verified = plans[:VERIFIED_PLANS] + colocated[:1]
    if deployable is not None and deployable not in verified:
        verified.append(deployable)
    for plan in verified:
        plan.predicted = predict(context, plan, rate if rate is not None else plan.capacity)
    return SearchResult(plans, colocated, outcomes, dropped, context.latency.name,
                        len(sample.prompts), deployment)


def choose_deployment(wanted: str, disaggregated: Plan | None, colocated: Plan | None,
                      context: Context) -> str:
    """The kind to recommend: as asked, or under "auto" whichever serves more per GPU as
    planned, in whole instances (a disaggregated goodput per GPU assumes the ideal mix of
    prefill and decode instances, which a small cluster cannot reach)."""
    if wanted == "colocated" and colocated is None:
        slo = context.slo
        raise SloUnreachableError(
            f"no colocated configuration with chunked prefill meets TTFT {slo.ttft:g} s and "
            f"TPOT {slo.tpot:g} s for {slo.attainment:.0%} of requests on this cluster; "
            "drop --deployment colocated to deploy the disaggregated plan")
    if disaggregated is None:
        return "colocated"
    if wanted == "auto" and colocated is not None:
        # Goodputs are bisected to within TOLERANCE, so a closer race is a tie; ties go to
        # disaggregation, which scales each phase on its own as the traffic mix changes.
        ahead = colocated.served_per_gpu > disaggregated.served_per_gpu * (1 + TOLERANCE)
        return "colocated" if ahead else "disaggregated"
    return "colocated" if wanted == "colocated" else "disaggregated"
