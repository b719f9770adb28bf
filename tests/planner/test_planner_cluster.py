"""Bandwidth a decode instance gets for pulling KV."""

from __future__ import annotations

import pytest

from planner.cluster import Cluster
from planner.errors import PlannerError
from planner.gpu_catalog import get_gpu


def test_network_share_grows_with_the_instance():
    cluster = Cluster(get_gpu("a100"), 4, 8, 25)
    # 25 Gbit/s is 3.125 GB/s per node; a 2-GPU instance owns a quarter of an 8-GPU node.
    assert cluster.network_gb_s(2) == pytest.approx(3.125 / 4)
    assert cluster.kv_link_gb_s(8, same_node=False) == pytest.approx(3.125)


def test_same_node_pulls_use_nvlink_per_gpu():
    cluster = Cluster(get_gpu("a100"), 1, 8, 25)
    assert cluster.kv_link_gb_s(2, same_node=True) == 600
    assert cluster.kv_link_gb_s(2, same_node=True) > 100 * cluster.kv_link_gb_s(2, False)


def test_cluster_rejects_nonsense():
    with pytest.raises(PlannerError):
        Cluster(get_gpu("a100"), 0, 8, 25)
