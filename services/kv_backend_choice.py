"""Which KV transfer backend a worker uses when told `--kv-backend auto`.

UCX is the backend for GPU clusters: RDMA between nodes and CUDA IPC or NVLink within one. On
a host without a GPU it has neither; UCX then runs over TCP on loopback, staging rendezvous
data through bounce buffers, and it excludes its shared-memory transports from endpoints that
handle peer failure. The `tcp` backend is the faster one there (`bench/kvtransfer_bandwidth.py`
on the 2-core development machine: a 2,048-token pull in 10 ms against 45 ms), and in service
it showed (`bench/e2e_latency.py --kv-backends ucx,tcp,ucx,tcp`, 2.5 req/s, one thread per
worker): the hand-off 10 to 54 ms shorter, median TTFT 6 to 19 ms and median TPOT 0 to 19 ms
lower. So `auto` means UCX where a GPU is the device and ucxx is installed, TCP otherwise.

A decode worker pulls with its own backend from the prefill worker's listener, so the workers
of one deployment should resolve to the same backend. The router prefers a decode worker on
the prefill worker's backend; any other one recomputes the prompt instead of pulling.
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
