"""A follower rank of a tensor-parallel engine: `python -m services.engine.tp_worker SPEC`.

Rank 0 (the worker process) starts one of these per extra rank. A follower loads its slice of
the weights, maps its KV pool, reports ready through the group's store, then runs every step
rank 0 sends until rank 0 says stop. It has no scheduler, sampler or network service.

It ignores SIGINT and SIGTERM, which reach the whole process group: rank 0 drains on them and
stops its followers itself. It exits on its own when rank 0 dies: its stdin (a pipe from rank 0)
reaches end of file, and the collectives fail as rank 0's connections close.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import signal
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

STORE_TIMEOUT = datetime.timedelta(seconds=60)
# Rank 0 posts the KV pool's size under this key once its own weights are in.
POOL_KEY = "pool"
POOL_WAIT = datetime.timedelta(seconds=600)

log = logging.getLogger("pdserve.engine")


@dataclass(frozen=True)
class FollowerSpec:
    """Everything a follower needs to know, as JSON on its command line."""

    model_name: str
    checkpoint_path: str
    checkpoint_kind: str  # "hf" | "gguf", as rank 0 resolved it
    dtype: str
    device: str  # rank 0's device type: "cpu" or "cuda"
    threads: int | None
    rank: int
    size: int
    store_port: int
    block_size: int
    pool_fd: int | None  # shared memory rank 0 made for this rank's KV pool (CPU)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> FollowerSpec:
        return cls(**json.loads(text))


def joined_key(rank: int) -> str:
    return f"joined/{rank}"


def ready_key(rank: int) -> str:
    return f"ready/{rank}"


def failed_key(rank: int) -> str:
    return f"failed/{rank}"


def _exit_when_rank0_dies() -> None:
    # Raw reads (no buffered reader whose lock would hold up interpreter shutdown) return b""
    # at end of file: rank 0's end of the pipe closed.
    while os.read(sys.stdin.fileno(), 4096):
        pass
    os._exit(0)


def serve(spec: FollowerSpec) -> int:
    """Join the group, load this rank's shard, then follow rank 0's steps; the exit code."""
    import torch
    import torch.distributed as dist

    from services.engine.checkpoint import located
    from services.engine.config import DTYPES
    from services.engine.kv_cache import KVLayout, KVPool, shared_memory_tensor
    from services.engine.model import LlamaForCausalLM
    from services.engine.model_runner import ModelRunner
    from services.engine.parallel import TPGroup, TPShard, rank_device
    from services.engine.weights import load_weights, weight_slices

    if spec.threads:
        torch.set_num_threads(spec.threads)
    store = dist.TCPStore("127.0.0.1", spec.store_port, spec.size, False, timeout=STORE_TIMEOUT)
    store.set(joined_key(spec.rank), "1")
    device = rank_device(torch.device(spec.device), spec.rank)
    group = TPGroup(store, spec.rank, spec.size, device)
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dtype = DTYPES[spec.dtype]
        checkpoint = located(spec.model_name, Path(spec.checkpoint_path), spec.checkpoint_kind)
        cfg = checkpoint.config
        shard = TPShard.of(cfg, spec.rank, spec.size)
        with torch.device("meta"):
            model = LlamaForCausalLM(cfg, shard, group)
        model = model.to(dtype).to_empty(device=device)
        if cfg.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        load_weights(model, checkpoint.tensors(weight_slices(cfg, shard)))
        store.wait([POOL_KEY], POOL_WAIT)
        pool_size = json.loads(store.get(POOL_KEY))
        layout = KVLayout(
            num_blocks=pool_size["num_blocks"],
            num_kv_heads=shard.num_kv_heads,
            num_layers=cfg.num_layers,
            block_size=spec.block_size,
            head_dim=cfg.head_dim,
            dtype=dtype,
        )
        memory = None
        if spec.pool_fd is not None:
            memory = shared_memory_tensor(spec.pool_fd, layout.shape, dtype)
            os.close(spec.pool_fd)
        pool = KVPool(layout, device, memory)
        max_positions = pool_size["max_positions"]
        runner = ModelRunner(model.eval(), cfg, pool, device, dtype, max_positions, group)
    except Exception as exc:  # rank 0 reports it: a follower's failure is the engine's failure
        store.set(failed_key(spec.rank), f"{type(exc).__name__}: {exc}")
        log.exception("rank %d failed to start", spec.rank)
        return 1
    store.set(ready_key(spec.rank), "1")
    try:
        runner.follow()
    except RuntimeError as exc:  # a collective failed: rank 0 (or another rank) went away
        log.error("rank %d stopped: %s", spec.rank, exc)
        return 1
    return 0


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    spec = FollowerSpec.from_json(argv[0])
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s %(name)s [rank {spec.rank}]: %(message)s",
        stream=sys.stderr,
    )
    threading.Thread(target=_exit_when_rank0_dies, name="rank0-watch", daemon=True).start()
    return serve(spec)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
