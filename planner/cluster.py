"""The cluster being planned: how many nodes of which GPU, and the bandwidth between them."""

from __future__ import annotations

from dataclasses import dataclass

from planner.errors import PlannerError
from planner.gpu_catalog import GpuSpec


@dataclass(frozen=True)
class Cluster:
    """`nodes` machines with `gpus_per_node` GPUs each; `network_gbps` per node (Gbit/s)."""

    gpu: GpuSpec
    nodes: int
    gpus_per_node: int
    network_gbps: float

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise PlannerError("--nodes and --gpus-per-node must be at least 1")
        if self.network_gbps <= 0:
            raise PlannerError("--network-gbps must be positive")

    @property
    def total_gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def network_gb_s(self, gpus: int) -> float:
        """Scale-out GB/s an instance of `gpus` GPUs gets: its share of its nodes' NICs."""
        return self.network_gbps / 8 * gpus / self.gpus_per_node

    def kv_link_gb_s(self, decode_gpus: int, same_node: bool) -> float:
        """Bandwidth a decode instance pulls KV over: NVLink/PCIe on one node, else the network."""
        if same_node:
            # Every GPU of the decode instance pulls its own shard at once.
            return self.gpu.intra_node_gb_s(self.gpus_per_node) * decode_gpus
        return self.network_gb_s(decode_gpus)
