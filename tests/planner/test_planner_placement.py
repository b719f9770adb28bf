"""From per-instance goodputs to deployments that fit the nodes."""

from __future__ import annotations

import pytest

from planner.cluster import Cluster
from planner.goodput import PhaseOutcome, PhaseTask
from planner.gpu_catalog import get_gpu
from planner.placement import colocated_plans, high_affinity_plans, low_affinity_plans, pack


def outcome(phase: str, tp: int, goodput: float, pp: int = 1) -> PhaseOutcome:
    return PhaseOutcome(PhaseTask(phase, tp, pp, 100_000), goodput, goodput * 2)


def cluster(nodes: int, per_node: int = 8) -> Cluster:
    return Cluster(get_gpu("a100"), nodes, per_node, 100)


def test_packing_keeps_tensor_parallel_groups_inside_nodes():
    assert pack([4, 4], 1, 8)
    assert not pack([4, 4, 4], 1, 8)
    assert pack([4, 4, 4], 2, 8)
    assert not pack([3, 3, 3], 1, 8)
    assert pack([3, 3, 2], 1, 8)
    assert not pack([6, 6], 2, 4)


def test_high_affinity_sizes_each_role_for_the_target_rate():
    plans = high_affinity_plans([outcome("prefill", 2, 5.0)], [outcome("decode", 1, 3.0)],
                                cluster(2), rate=12.0)
    (plan,) = plans
    assert (plan.prefill.replicas, plan.decode.replicas) == (3, 4)  # ceil(12/5), ceil(12/3)
    assert plan.gpus == 10 and plan.capacity == 12.0
    # Mixed in the ideal ratio: 1 / (2/5 + 1/3) requests/s per GPU.
    assert plan.goodput_per_gpu == pytest.approx(1 / (2 / 5 + 1 / 3))


def test_high_affinity_without_a_rate_fills_the_cluster():
    (plan,) = high_affinity_plans([outcome("prefill", 2, 5.0)], [outcome("decode", 1, 3.0)],
                                  cluster(2), rate=None)
    assert plan.gpus <= 16
    # Best balance on 16 GPUs: 4 prefill (8 GPUs) + 7 decode, serving min(20, 21) = 20.
    assert plan.capacity == pytest.approx(20.0)


def test_a_rate_the_cluster_cannot_serve_gives_no_plan():
    assert high_affinity_plans([outcome("prefill", 2, 5.0)], [outcome("decode", 1, 3.0)],
                               cluster(1), rate=100.0) == []


def test_low_affinity_packs_both_roles_into_each_node():
    plans = low_affinity_plans([outcome("prefill", 2, 2.0)], [outcome("decode", 1, 3.0)],
                               cluster(2), rate=None)
    best = plans[0]
    # Per node: 3 prefill tp2 + 2 decode tp1 = 8 GPUs serving min(6, 6) req/s.
    assert (best.prefill.replicas, best.decode.replicas) == (6, 4)
    assert best.goodput_per_gpu == pytest.approx(6 / 8)
    assert best.capacity == pytest.approx(12.0)
    assert "3 prefill + 2 decode per node" in best.layout


def test_low_affinity_pipelines_span_nodes_with_one_stage_per_node():
    # tp4 pp2 instances: one 4-GPU stage of each role on each of two nodes.
    plans = low_affinity_plans([outcome("prefill", 4, 4.0, pp=2)],
                               [outcome("decode", 4, 4.0, pp=2)], cluster(4), rate=None)
    best = plans[0]
    assert "per 2 nodes" in best.layout
    assert (best.prefill.replicas, best.decode.replicas) == (2, 2)


def test_colocated_replicas():
    (plan, *_) = colocated_plans([outcome("colocated", 4, 6.0), outcome("colocated", 2, 2.0)],
                                 cluster(1), rate=10.0)
    assert plan.colocated.tp == 4 and plan.colocated.replicas == 2
    assert plan.goodput_per_gpu == pytest.approx(1.5)
