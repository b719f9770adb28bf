"""The KV layout facts a prefill and a decode worker must share before bytes move between them.

Both sides derive the fingerprint from their own engine; the KV layer refuses a pull when
the two differ (another model, dtype or block size), and the decode worker recomputes.
"""

from __future__ import annotations

from services.engine.engine import LLMEngine


def kv_fingerprint(engine: LLMEngine, tp_rank: int = 0, tp_size: int = 1) -> dict[str, str | int]:
    """What a block of this engine's pool means, as kvtransfer compares it."""
    layout, config = engine.layout, engine.model_config
    return {
        "model": config.name,
        "architecture": config.architecture,
        "dtype": str(layout.dtype).removeprefix("torch."),
        "block_size": layout.block_size,
        "num_layers": layout.num_layers,
        "num_kv_heads": layout.num_kv_heads,
        "head_dim": layout.head_dim,
        "tp_rank": tp_rank,
        "tp_size": tp_size,
        "kv_head_start": 0,
        "kv_head_count": layout.num_kv_heads,
    }
