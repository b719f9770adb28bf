"""Accelerators the planner knows: compute, memory, links, and the network of a typical node."""

from __future__ import annotations

from dataclasses import dataclass

from planner.errors import UnknownGpuError

MIB = 1 << 20


@dataclass(frozen=True)
class GpuSpec:
    """One accelerator model and the node it usually sits in. Bandwidths are per direction."""

    name: str
    bf16_tflops: float  # dense (no 2:4 sparsity), tensor cores
    hbm_gb_s: float  # device memory bandwidth, GB/s
    memory_mib: int  # device memory as nvidia-smi reports it
    nvlink_gb_s: float  # per GPU, per direction; 0 when the GPU has no NVLink
    nvlink_domain: int  # GPUs that share NVLink (8 on an HGX board, 2 with a PCIe bridge)
    pcie_gb_s: float  # host link per direction, used between GPUs outside an NVLink domain
    node_network_gbps: float  # the whole node's scale-out bandwidth, Gbit/s
    description: str

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB

    def intra_node_gb_s(self, gpus: int) -> float:
        """Bandwidth between `gpus` GPUs of one node: NVLink inside its domain, else PCIe."""
        if gpus <= 1 or gpus <= self.nvlink_domain:
            return self.nvlink_gb_s if self.nvlink_gb_s else self.pcie_gb_s
        return self.pcie_gb_s


# Figures are NVIDIA's datasheet numbers unless noted; marketed NVLink and PCIe figures are
# bidirectional, so the per-direction value stored here is half of them.
GPUS: dict[str, GpuSpec] = {
    gpu.name: gpu
    for gpu in [
        GpuSpec(
            # NVIDIA A100 datasheet (nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/
            # pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf): 312 TFLOPS BF16 dense,
            # 2,039 GB/s HBM2e, NVLink 600 GB/s, PCIe Gen4 64 GB/s. Node network: AWS
            # p4de.24xlarge, 8 x A100 80GB with 400 Gbps EFA
            # (aws.amazon.com/ec2/instance-types/p4/).
            name="a100-80g-sxm", bf16_tflops=312, hbm_gb_s=2039, memory_mib=81920,
            nvlink_gb_s=300, nvlink_domain=8, pcie_gb_s=32, node_network_gbps=400,
            description="NVIDIA A100 80GB SXM4",
        ),
        GpuSpec(
            # A100 datasheet: 1,555 GB/s HBM2 for the 40GB SXM4. Node: AWS p4d.24xlarge,
            # 400 Gbps EFA.
            name="a100-40g-sxm", bf16_tflops=312, hbm_gb_s=1555, memory_mib=40960,
            nvlink_gb_s=300, nvlink_domain=8, pcie_gb_s=32, node_network_gbps=400,
            description="NVIDIA A100 40GB SXM4",
        ),
        GpuSpec(
            # A100 datasheet: 80GB PCIe 1,935 GB/s; NVLink bridge joins pairs at 600 GB/s.
            # Node network: a single 100 GbE port, typical of PCIe servers (override with
            # --network-gbps).
            name="a100-80g-pcie", bf16_tflops=312, hbm_gb_s=1935, memory_mib=81920,
            nvlink_gb_s=300, nvlink_domain=2, pcie_gb_s=32, node_network_gbps=100,
            description="NVIDIA A100 80GB PCIe",
        ),
        GpuSpec(
            # A100 datasheet: 40GB PCIe 1,555 GB/s; NVLink bridge pairs at 600 GB/s.
            name="a100-40g-pcie", bf16_tflops=312, hbm_gb_s=1555, memory_mib=40960,
            nvlink_gb_s=300, nvlink_domain=2, pcie_gb_s=32, node_network_gbps=100,
            description="NVIDIA A100 40GB PCIe",
        ),
        GpuSpec(
            # NVIDIA H100 datasheet (resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-
            # gpu-datasheet): SXM 989 TFLOPS BF16 dense (1,979 with sparsity), 3.35 TB/s HBM3,
            # NVLink 900 GB/s, PCIe Gen5 128 GB/s. Node: AWS p5.48xlarge, 3,200 Gbps EFA.
            name="h100-sxm", bf16_tflops=989, hbm_gb_s=3350, memory_mib=81559,
            nvlink_gb_s=450, nvlink_domain=8, pcie_gb_s=64, node_network_gbps=3200,
            description="NVIDIA H100 80GB SXM5",
        ),
        GpuSpec(
            # H100 datasheet: PCIe 756 TFLOPS BF16 dense, 2 TB/s HBM2e, NVLink bridge 600 GB/s
            # (pairs), PCIe Gen5 128 GB/s. Node network: 100 GbE (override with --network-gbps).
            name="h100-pcie", bf16_tflops=756, hbm_gb_s=2000, memory_mib=81559,
            nvlink_gb_s=300, nvlink_domain=2, pcie_gb_s=64, node_network_gbps=100,
            description="NVIDIA H100 80GB PCIe",
        ),
        GpuSpec(
            # NVIDIA H200 datasheet (nvidia.com/en-us/data-center/h200/): SXM 989 TFLOPS BF16
            # dense, 4.8 TB/s HBM3e, 141 GB, NVLink 900 GB/s. Node: AWS p5en.48xlarge,
            # 3,200 Gbps EFA.
            name="h200-sxm", bf16_tflops=989, hbm_gb_s=4800, memory_mib=143771,
            nvlink_gb_s=450, nvlink_domain=8, pcie_gb_s=64, node_network_gbps=3200,
            description="NVIDIA H200 141GB SXM5",
        ),
        GpuSpec(
            # NVIDIA L40S datasheet (nvidia.com/en-us/data-center/l40s/): 362 TFLOPS BF16 dense
            # (733 with sparsity), 864 GB/s GDDR6, 48 GB, no NVLink, PCIe Gen4 x16 64 GB/s.
            # Node: AWS g6e.48xlarge, 8 x L40S, 400 Gbps.
            name="l40s", bf16_tflops=362, hbm_gb_s=864, memory_mib=46068,
            nvlink_gb_s=0, nvlink_domain=0, pcie_gb_s=32, node_network_gbps=400,
            description="NVIDIA L40S 48GB",
        ),
        GpuSpec(
            # NVIDIA L4 datasheet (nvidia.com/en-us/data-center/l4/): 121 TFLOPS BF16 dense
            # (242 with sparsity), 300 GB/s, 24 GB, PCIe Gen4 x16 64 GB/s. Node: AWS
            # g6.48xlarge, 8 x L4, 100 Gbps.
            name="l4", bf16_tflops=121, hbm_gb_s=300, memory_mib=23034,
            nvlink_gb_s=0, nvlink_domain=0, pcie_gb_s=32, node_network_gbps=100,
            description="NVIDIA L4 24GB",
        ),
        GpuSpec(
            # AWS's A10 variant: about 70 TFLOPS BF16 tensor (the A10 has 125), 600 GB/s
            # GDDR6, 24 GB (Baseten, "NVIDIA A10 vs A10G for ML model inference", 2023). Node:
            # AWS g5.48xlarge, 8 x A10G, 100 Gbps (aws.amazon.com/ec2/instance-types/g5/).
            name="a10g", bf16_tflops=70, hbm_gb_s=600, memory_mib=23028,
            nvlink_gb_s=0, nvlink_domain=0, pcie_gb_s=32, node_network_gbps=100,
            description="NVIDIA A10G 24GB",
        ),
        GpuSpec(
            # This repository's 2-core development machine, one "GPU" per worker process;
            # figures from the reference measurements in DESIGN.md: 0.75 TFLOP/s bf16 matmul on
            # 2 threads, a 2.6 GB/s single-thread copy (reads plus writes, so about 5 GB/s of
            # reading), 24 GiB of RAM, 0.73 GB/s UCX between two processes.
            name="cpu", bf16_tflops=0.75, hbm_gb_s=5.2, memory_mib=24576,
            nvlink_gb_s=0, nvlink_domain=0, pcie_gb_s=0.73, node_network_gbps=5.8,
            description="the 2-core development machine (CPU)",
        ),
    ]
}

ALIASES = {
    "a100": "a100-80g-sxm",
    "a100-80g": "a100-80g-sxm",
    "a100-80gb": "a100-80g-sxm",
    "a100-40g": "a100-40g-sxm",
    "a100-40gb": "a100-40g-sxm",
    "h100": "h100-sxm",
    "h200": "h200-sxm",
}


def get_gpu(name: str) -> GpuSpec:
    """Look a GPU up by catalog name or alias (case-insensitive)."""
    key = name.strip().lower().replace("_", "-")
    key = ALIASES.get(key, key)
    if key not in GPUS:
        raise UnknownGpuError(f"unknown GPU {name!r}; choose one of {', '.join(GPUS)}")
    return GPUS[key]
