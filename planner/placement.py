"""Turning per-instance goodputs into deployments that fit the cluster's nodes.

High node-affinity (DistServe's first algorithm) picks prefill and decode shapes independently
and replicates each: the configuration's goodput per GPU is that of the two mixed in the ideal
ratio, `1 / (gpus_p / goodput_p + gpus_d / goodput_d)`. Instances go anywhere; a tensor-parallel
group stays inside a node, pipeline stages may cross nodes, and KV moves over the network.

Low node-affinity (the second algorithm) builds a unit of `P` nodes (P = the pipeline stages that
cross nodes) where every node holds the same stage of `n_p` prefill and `n_d` decode instances,
so each stage's KV moves over NVLink; the unit serves `min(n_p * goodput_p, n_d * goodput_d)` and
is replicated across the cluster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.cluster import Cluster
from planner.goodput import PhaseOutcome
from planner.plan import Plan, RolePlan

# Plans worked out in full (replicas, packing) for each algorithm, best per-GPU goodput first.
TOP_COMBINATIONS = 8


def pack(pieces: list[int], nodes: int, per_node: int) -> bool:
    """Whether GPU groups of the given sizes fit the nodes (first fit, largest first)."""
    free = [per_node] * nodes
    for piece in sorted(pieces, reverse=True):
        for i, room in enumerate(free):
            if room >= piece:
                free[i] = room - piece
                break
        else:
            return False
    return True


def _pieces(outcome: PhaseOutcome, count: int) -> list[int]:
    # A tensor-parallel group must share a node; pipeline stages are separate pieces.
    return [outcome.task.tp] * (outcome.task.pp * count)


def _fits(cluster: Cluster, parts: list[tuple[PhaseOutcome, int]]) -> bool:
    pieces = [p for outcome, count in parts for p in _pieces(outcome, count)]
    return pack(pieces, cluster.nodes, cluster.gpus_per_node)


def _role(outcome: PhaseOutcome, replicas: int) -> RolePlan:
    task = outcome.task
    return RolePlan(task.tp, task.pp, replicas, outcome.goodput, task.capacity_tokens)


def _high_replicas(p: PhaseOutcome, d: PhaseOutcome, cluster: Cluster,
                   rate: float | None) -> tuple[int, int] | None:
    if rate is not None:
        n, m = math.ceil(rate / p.goodput), math.ceil(rate / d.goodput)
        return (n, m) if _fits(cluster, [(p, n), (d, m)]) else None
    best: tuple[float, int, int, int] | None = None  # (capacity, -gpus, n, m)
    for n in range(1, cluster.total_gpus // p.task.gpus + 1):
        room = (cluster.total_gpus - n * p.task.gpus) // d.task.gpus
        m = min(room, math.ceil(n * p.goodput / d.goodput))
        while m >= 1 and not _fits(cluster, [(p, n), (d, m)]):
            m -= 1
        if m < 1:
            continue
        key = (min(n * p.goodput, m * d.goodput), -(n * p.task.gpus + m * d.task.gpus), n, m)
        if best is None or key[:2] > best[:2]:
            best = key
    return None if best is None else (best[2], best[3])


def high_affinity_plans(prefills: list[PhaseOutcome], decodes: list[PhaseOutcome],
                        cluster: Cluster, rate: float | None) -> list[Plan]:
    """The best high-affinity deployments that fit, best per-GPU goodput first."""
    combos = sorted(
        ((1.0 / (p.task.gpus / p.goodput + d.task.gpus / d.goodput), p, d)
         for p in prefills for d in decodes),
        key=lambda c: (-c[0], c[1].task.gpus + c[2].task.gpus),
    )
    plans: list[Plan] = []
    for per_gpu, p, d in combos:
        replicas = _high_replicas(p, d, cluster, rate)
        if replicas is None:
            continue
        n, m = replicas
        plans.append(Plan(
            kind="disaggregated", affinity="high", prefill=_role(p, n), decode=_role(d, m),
            colocated=None, goodput_per_gpu=per_gpu,
            capacity=min(n * p.goodput, m * d.goodput),
            layout="instances spread over nodes; KV moves over the network",
        ))
        if len(plans) >= TOP_COMBINATIONS:
            break
    return plans


@dataclass(frozen=True)
class LowUnit:
    """P nodes, each holding one stage of `n_prefill` prefill and `n_decode` decode instances."""

    prefill: PhaseOutcome
    decode: PhaseOutcome
    n_prefill: int
    n_decode: int
    stages: int  # nodes the unit spans

    @property
    def gpus(self) -> int:
        return self.n_prefill * self.prefill.task.gpus + self.n_decode * self.decode.task.gpus

    @property
    def rate(self) -> float:
        return min(self.n_prefill * self.prefill.goodput, self.n_decode * self.decode.goodput)


def low_affinity_units(prefills: list[PhaseOutcome], decodes: list[PhaseOutcome],
                       cluster: Cluster) -> list[LowUnit]:
    """Every unit worth considering, best goodput per GPU first."""
    per_node = cluster.gpus_per_node
    units: list[LowUnit] = []
    for stages in range(1, cluster.nodes + 1):
        for p in prefills:
            if p.task.pp % stages or p.task.gpus // stages > per_node:
                continue
            seg_p = p.task.gpus // stages
            for d in decodes:
                if d.task.pp % stages:
                    continue
                seg_d = d.task.gpus // stages
                for n_p in range(1, (per_node - seg_d) // seg_p + 1):
                    most_d = (per_node - n_p * seg_p) // seg_d
                    balanced = math.ceil(n_p * p.goodput / d.goodput)
                    for n_d in {min(most_d, balanced), max(1, min(most_d, balanced - 1))}:
                        units.append(LowUnit(p, d, n_p, n_d, stages))
    units.sort(key=lambda u: (-u.rate / u.gpus, u.gpus))
    return units


def low_affinity_plans(prefills: list[PhaseOutcome], decodes: list[PhaseOutcome],
                       cluster: Cluster, rate: float | None) -> list[Plan]:
    """The best low-affinity deployments (decodes timed with KV over NVLink)."""
    plans: list[Plan] = []
    for unit in low_affinity_units(prefills, decodes, cluster):
        most_units = cluster.nodes // unit.stages
        count = most_units if rate is None else math.ceil(rate / unit.rate)
        if count > most_units or count < 1:
            continue
        span = f"{unit.stages} nodes" if unit.stages > 1 else "node"
        plans.append(Plan(
            kind="disaggregated", affinity="low",
            prefill=_role(unit.prefill, unit.n_prefill * count),
            decode=_role(unit.decode, unit.n_decode * count), colocated=None,
            goodput_per_gpu=unit.rate / unit.gpus, capacity=unit.rate * count,
            layout=(f"{count} x ({unit.n_prefill} prefill + {unit.n_decode} decode per {span}, "
                    f"{unit.gpus} GPUs); KV moves over NVLink"),
        ))
        if len(plans) >= TOP_COMBINATIONS:
            break
    return plans


def gpus_needed(prefills: list[PhaseOutcome], decodes_network: list[PhaseOutcome],
                decodes_nvlink: list[PhaseOutcome], cluster: Cluster, rate: float) -> int:
    """Fewest GPUs in whole instances (or low-affinity units) that serve `rate`."""
    high = [math.ceil(rate / p.goodput) * p.task.gpus + math.ceil(rate / d.goodput) * d.task.gpus
            for p in prefills for d in decodes_network]
    low = [math.ceil(rate / u.rate) * u.gpus
           for u in low_affinity_units(prefills, decodes_nvlink, cluster)]
    return min(high + low)


def colocated_plans(outcomes: list[PhaseOutcome], cluster: Cluster,
                    rate: float | None) -> list[Plan]:
    """Colocated deployments (every instance does prefill and decode), best first."""
    plans: list[Plan] = []
    for c in sorted(outcomes, key=lambda o: (-o.per_gpu, o.task.gpus)):
        if rate is not None:
            count = math.ceil(rate / c.goodput)
            if not _fits(cluster, [(c, count)]):
                continue
        else:
            count = cluster.total_gpus // c.task.gpus
            while count >= 1 and not _fits(cluster, [(c, count)]):
                count -= 1
            if count < 1:
                continue
        plans.append(Plan(
            kind="colocated", affinity="", prefill=None, decode=None,
            colocated=_role(c, count), goodput_per_gpu=c.per_gpu, capacity=count * c.goodput,
            layout="instances spread over nodes", budget=c.task.budget, policy=c.task.policy,
        ))
        if len(plans) >= TOP_COMBINATIONS:
            break
    return plans
