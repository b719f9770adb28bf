"""The GPU catalog covers the accelerators users plan for."""

from __future__ import annotations

import pytest

from planner.errors import UnknownGpuError
from planner.gpu_catalog import GPUS, get_gpu


def test_catalog_has_every_gpu_the_issue_names():
    expected = {"a100-80g-sxm", "a100-40g-sxm", "a100-80g-pcie", "a100-40g-pcie", "h100-sxm",
                "h100-pcie", "h200-sxm", "l40s", "l4", "a10g"}
    assert expected <= set(GPUS)
    for gpu in GPUS.values():
        assert gpu.bf16_tflops > 0 and gpu.hbm_gb_s > 0 and gpu.memory_mib > 0
        assert gpu.node_network_gbps > 0 and gpu.pcie_gb_s > 0


@pytest.mark.parametrize(("name", "canonical"), [
    ("A100", "a100-80g-sxm"), ("h100", "h100-sxm"), ("A100_40G_PCIE", "a100-40g-pcie"),
])
def test_aliases_and_spelling(name, canonical):
    assert get_gpu(name).name == canonical


def test_unknown_gpu_lists_the_choices():
    with pytest.raises(UnknownGpuError, match="h100-sxm"):
        get_gpu("v100")


def test_links_inside_a_node():
    sxm, pcie, l4 = get_gpu("a100-80g-sxm"), get_gpu("a100-80g-pcie"), get_gpu("l4")
    assert sxm.intra_node_gb_s(8) == 300  # NVLink across the HGX board
    assert pcie.intra_node_gb_s(2) == 300  # a bridged pair
    assert pcie.intra_node_gb_s(4) == 32  # beyond the pair: PCIe
    assert l4.intra_node_gb_s(2) == 32  # no NVLink at all
