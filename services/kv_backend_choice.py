"""Which KV transfer backend a worker uses when told `--kv-backend auto`.

UCX is the backend for GPU clusters: RDMA between nodes and CUDA IPC or NVLink within one. On
a host without a GPU it has neither; UCX then runs over TCP on loopback, staging rendezvous
data through bounce buffers, and it excludes its shared-memory transports from endpoints that
handle peer failure. The `tcp` backend is the faster one there (`bench/kvtransfer_bandwidth.py`
on the 2-core development machine: a 2,048-token pull in 10 ms against 45 ms), and in service
it showed: at 2.5 req/s on `pdserve up --prefill 1 --decode 1 --threads 1`, median TPOT 50-57
ms against 59-61 ms over UCX. So `auto` means UCX where a GPU is the device and ucxx is
installed, TCP otherwise. Every worker of one deployment must resolve to the same backend:
a decode worker pulls with its own backend from the prefill worker's listener.
"""

from __future__ import annotations

import importlib.util

BACKENDS = ("auto", "ucx", "tcp")


def resolve_kv_backend(choice: str, device: str) -> str:
    """`ucx` or `tcp` for `choice` (auto, ucx or tcp) on `device` (auto, cpu or cuda)."""
    if choice != "auto":
        return choice
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and importlib.util.find_spec("ucxx") is not None:
        return "ucx"
    return "tcp"
