"""The KV layout facts a prefill and a decode worker must share before bytes move between them.

Both sides derive the fingerprint from their own engine; the KV layer refuses a pull when
the two differ (another model, dtype or block size), and the decode worker recomputes.

A tensor-parallel worker has one pool per rank, each holding a range of the model's KV heads,
so each rank's fingerprint also names its slice: ``tp_rank``, ``tp_size``, ``kv_head_start``
and ``kv_head_count``. A decode rank reading from a prefill rank of another layout expects the
prefill rank's fingerprint: the model facts of its own, the slice that rank must hold.
"""

from __future__ import annotations

from kvtransfer import Fingerprint
from services.engine.engine import LLMEngine
from services.engine.kv_cache import KVShard
from services.engine.parallel import kv_head_range


def kv_fingerprint(engine: LLMEngine, shard: KVShard | None = None) -> Fingerprint:
    """What a block of one rank's pool (rank 0's by default) means, as kvtransfer compares it."""
    layout, config = engine.layout, engine.model_config
    tp = engine.shard
    rank, start, count = (
        (0, tp.kv_head_start, tp.num_kv_heads)
        if shard is None
        else (shard.rank, shard.kv_head_start, shard.num_kv_heads)
    )
    return {
        "model": config.name,
        "architecture": config.architecture,
        "dtype": str(layout.dtype).removeprefix("torch."),
        "block_size": layout.block_size,
        "num_layers": layout.num_layers,
        "num_kv_heads": config.num_kv_heads,
        "head_dim": layout.head_dim,
        "tp_rank": rank,
        "tp_size": tp.size,
        "kv_head_start": start,
        "kv_head_count": count,
    }


def peer_fingerprint(ours: Fingerprint, tp_rank: int, tp_size: int) -> Fingerprint:
    """The fingerprint rank ``tp_rank`` of a ``tp_size``-way worker of our model must have."""
    num_kv_heads = ours["num_kv_heads"]
    assert isinstance(num_kv_heads, int)
    start, count = kv_head_range(num_kv_heads, tp_rank, tp_size)
    return ours | {
        "tp_rank": tp_rank,
        "tp_size": tp_size,
        "kv_head_start": start,
        "kv_head_count": count,
    }
