"""Moving paged KV blocks between processes and hosts, pulled by the reader under a lease.

kvtransfer knows memory regions and blocks, not models: the engine hands it its KV pool (one
contiguous tensor whose block ``i`` is bytes ``[i * block_bytes, (i + 1) * block_bytes)``) and
a fingerprint dict of layout facts that both sides must agree on.

Prefill side::

    holder = KVHolder(pool, block_bytes, fingerprint, token, backend="ucx",
                      on_release=engine_frees_blocks)
    await holder.start()
    params = holder.grant(block_ids, num_tokens)          # -> KVTransferParams
    reply["kv_transfer_params"] = params.to_dict()        # plain JSON

Decode side::

    fetcher = KVFetcher(pool, block_bytes, fingerprint, token, backend="ucx")
    params = KVTransferParams.from_dict(body["kv_transfer_params"])   # InvalidParams if bad
    await fetcher.fetch(params, my_block_ids)             # pulls, then releases the lease

Backends: ``ucx`` (ucxx; RDMA/NVLink on a cluster, TCP loopback on a CPU host, see
``kvtransfer.ucx_transport``) and ``tcp`` (asyncio sockets). Both move bytes straight between
the two pools' memory. Every error is a ``KVTransferError`` subclass.
"""

from kvtransfer.errors import (
    AuthError,
    FingerprintMismatch,
    InvalidParams,
    KVTransferError,
    LeaseNotFound,
    TransferError,
    TransferTimeout,
)
from kvtransfer.fetcher import FetchResult, KVFetcher
from kvtransfer.holder import KVHolder
from kvtransfer.metrics import FetcherMetrics, HolderMetrics
from kvtransfer.params import BACKENDS, Fingerprint, KVTransferParams

__all__ = [
    "BACKENDS",
    "AuthError",
    "FetchResult",
    "FetcherMetrics",
    "Fingerprint",
    "FingerprintMismatch",
    "HolderMetrics",
    "InvalidParams",
    "KVFetcher",
    "KVHolder",
    "KVTransferError",
    "KVTransferParams",
    "LeaseNotFound",
    "TransferError",
    "TransferTimeout",
]
